//! Compiles the C++ shims around PyTorch's own C++ API that tch does not bind, against the
//! libtorch in `LIBTORCH` (`scripts/with-libtorch.sh` and `scripts/build-for-gpu-node.sh` set
//! it):
//!
//! - with the `cuda-graphs` feature, `csrc/cuda_graph.cpp` (a CUDA graph), which also needs the
//!   CUDA runtime headers in `CHEX_CUDA_INCLUDE` and a libtorch built with CUDA;
//! - with the `profiler` feature, `csrc/profiler.cpp` (PyTorch's Kineto profiler).
//!
//! Without either feature there is nothing to build.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda-graphs")]
    shims::cuda_graphs();
    #[cfg(feature = "profiler")]
    shims::profiler();
}

#[cfg(any(feature = "cuda-graphs", feature = "profiler"))]
mod shims {
    use std::env;
    use std::path::{Path, PathBuf};

    fn required(var: &str, what: &str, feature: &str) -> PathBuf {
        println!("cargo:rerun-if-env-changed={var}");
        match env::var_os(var) {
            Some(path) if PathBuf::from(&path).is_dir() => PathBuf::from(path),
            _ => panic!(
                "the {feature} feature needs {var}: {what} (scripts/with-libtorch.sh and \
                 scripts/build-for-gpu-node.sh set it)"
            ),
        }
    }

    /// A C++17 build of `source` against `libtorch`'s headers, and the link search path.
    fn build(libtorch: &Path, source: &str) -> cc::Build {
        println!("cargo:rerun-if-changed={source}");
        println!("cargo:rerun-if-changed=csrc/guarded.h");
        println!(
            "cargo:rustc-link-search=native={}",
            libtorch.join("lib").display()
        );
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .file(source)
            .include(libtorch.join("include"))
            .include(libtorch.join("include/torch/csrc/api/include"))
            .flag("-std=c++17")
            .define("_GLIBCXX_USE_CXX11_ABI", "1")
            .warnings(false);
        build
    }

    #[cfg(feature = "cuda-graphs")]
    pub fn cuda_graphs() {
        let libtorch = required("LIBTORCH", "a libtorch built with CUDA", "cuda-graphs");
        let cuda = required(
            "CHEX_CUDA_INCLUDE",
            "the CUDA runtime headers (cuda_runtime_api.h) of libtorch's CUDA version",
            "cuda-graphs",
        );
        build(&libtorch, "csrc/cuda_graph.cpp")
            .include(cuda)
            .compile("chex_cuda_graph");
        for lib in ["torch_cuda", "c10_cuda", "c10"] {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }

    #[cfg(feature = "profiler")]
    pub fn profiler() {
        let libtorch = required("LIBTORCH", "a libtorch with its C++ headers", "profiler");
        build(&libtorch, "csrc/profiler.cpp").compile("chex_profiler");
        for lib in ["torch_cpu", "c10"] {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }
}
