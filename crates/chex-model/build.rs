//! With the `cuda-graphs` feature, compiles `csrc/cuda_graph.cpp` (a CUDA graph through
//! PyTorch's own C++ API) against the libtorch in `LIBTORCH` and the CUDA runtime headers in
//! `CHEX_CUDA_INCLUDE`; `scripts/build-for-gpu-node.sh` sets both. Without the feature there is
//! nothing to build.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda-graphs")]
    cuda_graphs::build();
}

#[cfg(feature = "cuda-graphs")]
mod cuda_graphs {
    use std::env;
    use std::path::PathBuf;

    fn required(var: &str, what: &str) -> PathBuf {
        println!("cargo:rerun-if-env-changed={var}");
        match env::var_os(var) {
            Some(path) if PathBuf::from(&path).is_dir() => PathBuf::from(path),
            _ => panic!(
                "the cuda-graphs feature needs {var}: {what} (scripts/build-for-gpu-node.sh sets it)"
            ),
        }
    }

    pub fn build() {
        let libtorch = required("LIBTORCH", "a libtorch built with CUDA");
        let cuda = required(
            "CHEX_CUDA_INCLUDE",
            "the CUDA runtime headers (cuda_runtime_api.h) of libtorch's CUDA version",
        );
        println!("cargo:rerun-if-changed=csrc/cuda_graph.cpp");
        cc::Build::new()
            .cpp(true)
            .file("csrc/cuda_graph.cpp")
            .include(libtorch.join("include"))
            .include(libtorch.join("include/torch/csrc/api/include"))
            .include(cuda)
            .flag("-std=c++17")
            .define("_GLIBCXX_USE_CXX11_ABI", "1")
            .warnings(false)
            .compile("chex_cuda_graph");
        println!(
            "cargo:rustc-link-search=native={}",
            libtorch.join("lib").display()
        );
        for lib in ["torch_cuda", "c10_cuda", "c10"] {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }
}
