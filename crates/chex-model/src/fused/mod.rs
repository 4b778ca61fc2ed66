//! libtorch's own kernels for two operations a decode step runs in every layer, where burn's
//! operations take several launches each: Gemma's RMSNorm (one `rms_norm` after the input's cast
//! and the gain's offset, for seven operations) and the tanh GELU (one `gelu` for eight). On a
//! GPU every launch costs host time, and at MedGemma-4B a decode step is bound by that time
//! (`docs/performance.md`). Only tensors of the libtorch backend outside autodiff take these
//! two: under autodiff burn's operations run, whose backward passes burn knows.
//!
//! [`decoder`] goes further for generation: a whole decode step of every layer in libtorch
//! calls; [`autograd`] does the same for the decoder layers of LoRA training, with libtorch's
//! autograd taking their gradients; `graph` (with the `cuda-graphs` feature) replays the decode
//! step as a CUDA graph; `head` runs a frozen output head's blocks of the vocabulary, forward
//! and backward, as a few libtorch kernels each.

// burn marks its libtorch backend deprecated; this project builds on it on purpose.
#![allow(deprecated)]

use burn::tensor::Tensor;

#[cfg(feature = "tch")]
pub mod autograd;
#[cfg(feature = "tch")]
pub mod decoder;
#[cfg(feature = "cuda-graphs")]
mod graph;
#[cfg(feature = "tch")]
pub(crate) mod head;
#[cfg(feature = "tch")]
mod weights;

/// Whether generation on `device` decodes through a captured CUDA graph by default: in a build
/// with the `cuda-graphs` feature, on libtorch's CUDA backend, unless the environment sets
/// `CHEX_CUDA_GRAPHS=0` (or `CHEX_FUSED_DECODE=0`, which the graph builds on).
pub fn graph_decoding(device: &burn::tensor::Device) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    cfg!(feature = "cuda-graphs")
        && *ON.get_or_init(|| std::env::var("CHEX_CUDA_GRAPHS").map_or(true, |v| v != "0"))
        && crate::text::fused_decoding()
        && format!("{device:?}").contains("LibTorch(Cuda")
}

static GRAPH_REPLAYS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many decode steps this process has run by replaying a CUDA graph (0 without the
/// `cuda-graphs` feature): what a benchmark reports to show the graph was in use.
pub fn graph_replays() -> usize {
    GRAPH_REPLAYS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Count one replayed decode step.
#[cfg(feature = "cuda-graphs")]
pub(crate) fn count_graph_replay() {
    GRAPH_REPLAYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// `x / rms(x) * (1 + offset)` over the last dimension, in f32, when `x` is a libtorch tensor
/// outside autodiff (`None` otherwise).
#[cfg(feature = "tch")]
pub fn rms_norm<const D: usize>(x: &Tensor<D>, offset: &Tensor<1>, eps: f64) -> Option<Tensor<D>> {
    use weights::{handle, widened, wrap};
    if x.is_autodiff() || offset.is_autodiff() {
        return None;
    }
    let width = *x.dims().last()? as i64;
    let gain = widened(&handle(offset.clone())?) + 1.0;
    let normed = widened(&handle(x.clone())?).rms_norm([width], Some(&gain), eps);
    Some(wrap(normed))
}

/// Without the libtorch backend there is nothing to fuse.
#[cfg(not(feature = "tch"))]
pub fn rms_norm<const D: usize>(
    _x: &Tensor<D>,
    _offset: &Tensor<1>,
    _eps: f64,
) -> Option<Tensor<D>> {
    None
}

/// PyTorch's `gelu(x, approximate="tanh")` when `x` is a libtorch tensor outside autodiff
/// (`None` otherwise).
#[cfg(feature = "tch")]
pub fn gelu_tanh<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    if x.is_autodiff() {
        return None;
    }
    Some(weights::wrap(weights::handle(x.clone())?.gelu("tanh")))
}

/// Without the libtorch backend there is nothing to fuse.
#[cfg(not(feature = "tch"))]
pub fn gelu_tanh<const D: usize>(_x: &Tensor<D>) -> Option<Tensor<D>> {
    None
}

#[cfg(all(test, feature = "tch"))]
mod tests {
    use burn::tensor::{Device, Distribution, FloatDType, Tensor};

    use crate::device::DeviceChoice;
    use crate::layers::GemmaRmsNorm;

    fn close<const D: usize>(a: Tensor<D>, b: Tensor<D>, what: &str) {
        let diff: f32 = (a - b).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "{what}: max |Δ| {diff}");
    }

    #[test]
    fn libtorch_kernels_agree_with_burns_operations_and_autodiff_keeps_burns() {
        let device = DeviceChoice::TchCpu.device().unwrap();
        device.seed(5);
        let x = Tensor::<3>::random([2, 3, 16], Distribution::Normal(0.0, 3.0), &device);
        let offset = Tensor::<1>::random([16], Distribution::Normal(0.0, 0.5), &device);
        // burn's own operations: the same tensors on an autodiff device, where the kernels
        // above stand aside.
        let ad: Device = device.clone().autodiff();
        let on_ad = |t: Tensor<3>| Tensor::<3>::from_data(t.into_data(), &ad);
        let norm = GemmaRmsNorm {
            weight: burn::module::Param::from_tensor(offset.clone()),
            eps: 1e-6,
        };
        let ad_norm = GemmaRmsNorm {
            weight: burn::module::Param::from_tensor(Tensor::from_data(
                offset.clone().into_data(),
                &ad,
            )),
            eps: 1e-6,
        };
        assert!(super::rms_norm(&x, &offset, 1e-6).is_some());
        assert!(super::rms_norm(&on_ad(x.clone()), &offset, 1e-6).is_none());
        let fused = norm.forward(x.clone());
        let reference = ad_norm.forward(on_ad(x.clone())).inner();
        close(
            fused,
            Tensor::from_data(reference.into_data(), &device),
            "rms_norm",
        );
        // A bf16 input is widened first, as burn's path does.
        let half = x.clone().cast(FloatDType::BF16);
        let fused = norm.forward(half.clone());
        let reference = ad_norm.forward(on_ad(half.cast(FloatDType::F32)));
        close(
            fused,
            Tensor::from_data(reference.inner().into_data(), &device),
            "bf16 rms_norm",
        );

        assert!(super::gelu_tanh(&x).is_some());
        let fused = crate::layers::gelu_tanh(x.clone());
        let reference = crate::layers::gelu_tanh(on_ad(x)).inner();
        close(
            fused,
            Tensor::from_data(reference.into_data(), &device),
            "gelu",
        );
    }
}
