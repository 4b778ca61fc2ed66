//! Operator and kernel times from PyTorch's own profiler (Kineto) around a piece of work on a
//! libtorch device: what `chex bench --profile` reports, to say which kernels a GPU pass spends
//! its time in (the question `docs/performance.md` could only answer by counting bytes).
//!
//! Built with the `profiler` feature, which compiles `csrc/profiler.cpp` against libtorch's C++
//! headers; without it [`profile`] says so. Host events (operators, runtime calls) nest, so
//! their times overlap; a GPU's kernels do not, and their sum is the GPU's busy time.

use std::path::Path;

use serde::Serialize;

use crate::error::ModelError;

/// Whether this build has the profiler (the `profiler` feature).
pub const AVAILABLE: bool = cfg!(feature = "profiler");

/// What [`profile`] says in a build without the profiler.
pub const MISSING: &str = "this build has no profiler: rebuild with `--features profiler` \
    (libtorch backends only; see docs/backends.md)";

/// One operator (on the host) or kernel (on a GPU), with its calls and time summed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpTime {
    /// `cpu` for host events, `cuda` for GPU kernels and copies.
    pub device: String,
    pub name: String,
    pub calls: u64,
    pub seconds: f64,
}

/// Run `work` under PyTorch's profiler, recording host operators and, with `cuda`, GPU kernels;
/// with `trace`, write the whole timeline there as Chrome-trace JSON (what `chrome://tracing`
/// and Perfetto open). Returns `work`'s result and the recorded times by device and name,
/// longest first. `work` must leave no device work pending (synchronise before returning).
pub fn profile<R>(
    cuda: bool,
    trace: Option<&Path>,
    work: impl FnOnce() -> R,
) -> Result<(R, Vec<OpTime>), ModelError> {
    let (result, summary) = shim::profiled(cuda, trace, work)?;
    let mut times = summary
        .lines()
        .filter(|line| !line.is_empty())
        .map(parse_line)
        .collect::<Result<Vec<_>, _>>()?;
    times.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    Ok((result, times))
}

/// `device \t name \t calls \t nanoseconds`, as the shim writes a line.
fn parse_line(line: &str) -> Result<OpTime, ModelError> {
    let bad = || ModelError::Profiler(format!("unreadable summary line `{line}`"));
    let mut fields = line.split('\t');
    let (Some(device), Some(name), Some(calls), Some(nanos), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(bad());
    };
    Ok(OpTime {
        device: device.to_string(),
        name: name.to_string(),
        calls: calls.parse().map_err(|_| bad())?,
        seconds: nanos.parse::<f64>().map_err(|_| bad())? * 1e-9,
    })
}

#[cfg(feature = "profiler")]
mod shim {
    use std::ffi::{CStr, CString, c_char, c_int};
    use std::path::Path;
    use std::sync::Mutex;

    use crate::error::ModelError;

    unsafe extern "C" {
        fn chex_profiler_last_error() -> *const c_char;
        fn chex_profiler_start(with_cuda: c_int) -> c_int;
        fn chex_profiler_stop(trace_path: *const c_char) -> *mut c_char;
        fn chex_profiler_free(text: *mut c_char);
    }

    /// One profile at a time in the process: PyTorch's profiler is a global state.
    static RUNNING: Mutex<()> = Mutex::new(());

    fn failed(what: &str) -> ModelError {
        // SAFETY: the shim returns a NUL-terminated thread-local string, valid until its next
        // failure on this thread; it is copied at once.
        let message = unsafe { CStr::from_ptr(chex_profiler_last_error()) };
        ModelError::Profiler(format!("{what}: {}", message.to_string_lossy()))
    }

    pub fn profiled<R>(
        cuda: bool,
        trace: Option<&Path>,
        work: impl FnOnce() -> R,
    ) -> Result<(R, String), ModelError> {
        let trace =
            match trace {
                Some(path) => Some(CString::new(path.to_string_lossy().as_bytes()).map_err(
                    |_| ModelError::Profiler(format!("{}: a NUL in the path", path.display())),
                )?),
                None => None,
            };
        let _one = RUNNING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: no pointers cross; failure is reported through the status.
        if unsafe { chex_profiler_start(c_int::from(cuda)) } != 0 {
            return Err(failed("starting PyTorch's profiler"));
        }
        let result = work();
        let path = trace.as_ref().map_or(std::ptr::null(), |p| p.as_ptr());
        // SAFETY: `path` is null or a NUL-terminated string that outlives the call; the
        // returned text is copied before it is freed by the shim's own allocator.
        let summary = unsafe {
            let text = chex_profiler_stop(path);
            if text.is_null() {
                return Err(failed("stopping PyTorch's profiler"));
            }
            let copied = CStr::from_ptr(text).to_string_lossy().into_owned();
            chex_profiler_free(text);
            copied
        };
        Ok((result, summary))
    }
}

#[cfg(not(feature = "profiler"))]
mod shim {
    use std::path::Path;

    use crate::error::ModelError;

    pub fn profiled<R>(
        _cuda: bool,
        _trace: Option<&Path>,
        _work: impl FnOnce() -> R,
    ) -> Result<(R, String), ModelError> {
        Err(ModelError::Profiler(super::MISSING.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines_are_read_or_refused_by_name() {
        let time = parse_line("cuda\tampere_bf16_gemm\t34\t1500000").unwrap();
        assert_eq!(time.device, "cuda");
        assert_eq!(time.calls, 34);
        assert!((time.seconds - 1.5e-3).abs() < 1e-12);
        let err = parse_line("cuda\tonly three\t2").unwrap_err();
        assert!(err.to_string().contains("only three"), "{err}");
    }

    /// The profiler records the libtorch operations a piece of work issues, by name.
    #[cfg(feature = "profiler")]
    #[test]
    fn libtorch_operations_are_recorded_by_name() {
        use burn::tensor::{Distribution, Tensor};

        let device = crate::DeviceChoice::TchCpu.device().unwrap();
        let a = Tensor::<2>::random([64, 64], Distribution::Default, &device);
        let trace = std::env::temp_dir().join(format!("chex-profile-{}.json", std::process::id()));
        let (sum, times) = profile(false, Some(&trace), || {
            let product = a.clone().matmul(a.clone());
            product.sum().into_scalar::<f32>()
        })
        .unwrap();
        assert!(sum.is_finite());
        let mm = times
            .iter()
            .find(|t| t.name.contains("mm"))
            .unwrap_or_else(|| panic!("no matrix product among {times:?}"));
        assert_eq!(mm.device, "cpu");
        assert!(mm.calls >= 1 && mm.seconds > 0.0, "{mm:?}");
        let json = std::fs::read_to_string(&trace).unwrap();
        assert!(json.contains("traceEvents"), "not a Chrome trace");
        std::fs::remove_file(trace).unwrap();
        // A second profile in the same process works too.
        assert!(profile(false, None, || a.clone().exp()).is_ok());
    }

    #[cfg(not(feature = "profiler"))]
    #[test]
    fn without_the_feature_profiling_is_refused_with_the_remedy() {
        let err = profile(false, None, || ()).unwrap_err();
        assert!(err.to_string().contains("--features profiler"), "{err}");
    }
}
