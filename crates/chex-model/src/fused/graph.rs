//! A CUDA graph of the fused decode step, through PyTorch's own `at::cuda::CUDAGraph`
//! (`csrc/cuda_graph.cpp`; tch binds no graph API).
//!
//! A decode step at MedGemma-4B issues about 1,400 libtorch calls for under 2 ms of GPU work, and
//! the host's time per call, not the GPU, set its pace (`docs/performance.md`). Captured once per
//! generation call and replayed at every later step, the step costs one launch plus the copies
//! of its inputs into the graph's buffers. What a graph needs of the step: the same shapes and
//! the same buffers every time. So the step reads the whole key/value cache under a mask, and
//! writes its slot by an index held in a tensor (see [`super::decoder`]).
//!
//! Compiled only with the `cuda-graphs` feature, against a libtorch with CUDA and the CUDA
//! runtime's headers (`scripts/build-for-gpu-node.sh` fetches both).

use std::ffi::{CStr, c_char, c_int, c_void};

unsafe extern "C" {
    fn chex_cuda_graph_last_error() -> *const c_char;
    fn chex_cuda_graph_new() -> *mut c_void;
    fn chex_cuda_graph_free(handle: *mut c_void);
    fn chex_cuda_graph_enter_side_stream(handle: *mut c_void, device: c_int) -> c_int;
    fn chex_cuda_graph_leave_side_stream(handle: *mut c_void) -> c_int;
    fn chex_cuda_graph_capture_begin(handle: *mut c_void) -> c_int;
    fn chex_cuda_graph_capture_end(handle: *mut c_void) -> c_int;
    fn chex_cuda_graph_replay(handle: *mut c_void) -> c_int;
}

/// The message of the shim's last failure on this thread.
fn last_error(what: &str) -> String {
    // SAFETY: the shim returns a pointer to a NUL-terminated thread-local string that stays
    // valid until its next failure on this thread; it is copied at once.
    let message = unsafe { CStr::from_ptr(chex_cuda_graph_last_error()) };
    format!("{what}: {}", message.to_string_lossy())
}

fn checked(status: c_int, what: &str) -> Result<(), String> {
    if status == 0 {
        Ok(())
    } else {
        Err(last_error(what))
    }
}

/// One CUDA graph and the side stream it is captured on.
pub(crate) struct CudaGraph {
    handle: *mut c_void,
}

// SAFETY: the graph is only ever used by one thread at a time (it lives in a generation call's
// cache), and CUDA graphs may be launched from any thread.
unsafe impl Send for CudaGraph {}

impl CudaGraph {
    /// An empty graph.
    pub fn new() -> Result<Self, String> {
        // SAFETY: no arguments; a null result is a failure reported below.
        let handle = unsafe { chex_cuda_graph_new() };
        if handle.is_null() {
            return Err(last_error("creating a CUDA graph"));
        }
        Ok(Self { handle })
    }

    /// Record what `body` issues on CUDA device `device`: first run eagerly on a side stream
    /// (the warm-up PyTorch asks for, which also gives this call's result), then captured.
    /// Returns the eager run's result, then the recorded run's (whose buffers a replay fills);
    /// nothing the capture recorded has run yet.
    pub fn capture<T>(&mut self, device: usize, body: impl Fn() -> T) -> Result<(T, T), String> {
        // SAFETY (every call below): `handle` is live until drop, and the shim catches every
        // C++ exception.
        checked(
            unsafe { chex_cuda_graph_enter_side_stream(self.handle, device as c_int) },
            "entering a side stream",
        )?;
        let result = self.warm_up_and_record(body);
        let left = checked(
            unsafe { chex_cuda_graph_leave_side_stream(self.handle) },
            "leaving the side stream",
        );
        let out = result?;
        left?;
        Ok(out)
    }

    fn warm_up_and_record<T>(&mut self, body: impl Fn() -> T) -> Result<(T, T), String> {
        let eager = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&body))
            .map_err(|_| "the step failed before capture".to_string())?;
        checked(
            unsafe { chex_cuda_graph_capture_begin(self.handle) },
            "beginning a capture",
        )?;
        let recorded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&body));
        // The capture must end whatever happened inside it, or the stream stays captured.
        let ended = checked(
            unsafe { chex_cuda_graph_capture_end(self.handle) },
            "ending the capture",
        );
        let recorded =
            recorded.map_err(|_| "an operation of the step cannot be captured".to_string())?;
        ended?;
        Ok((eager, recorded))
    }

    /// Launch the captured work on the current stream.
    pub fn replay(&mut self) -> Result<(), String> {
        checked(
            unsafe { chex_cuda_graph_replay(self.handle) },
            "replaying the graph",
        )
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: the handle came from `chex_cuda_graph_new` and is freed once.
        unsafe { chex_cuda_graph_free(self.handle) }
    }
}
