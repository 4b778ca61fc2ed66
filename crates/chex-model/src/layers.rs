//! Building blocks shared by the vision tower and the decoder: Gemma's RMSNorm, the tanh GELU,
//! and a linear layer that can carry a LoRA adapter.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer};
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Gemma's RMSNorm: `x / rms(x) * (1 + weight)`, so a zero weight is the identity.
#[derive(Module, Debug)]
pub struct GemmaRmsNorm {
    /// Offset from one of the per-channel gain (checkpoint key `weight`).
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square before the root.
    pub eps: f64,
}

impl GemmaRmsNorm {
    /// A norm of width `dim` with zero weight (unit gain).
    pub fn new(dim: usize, eps: f64, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::zeros([dim], device)),
            eps,
        }
    }

    /// Normalise over the last dimension, in f32 whatever the input's dtype (a bf16 product
    /// is widened first, as Gemma's own norm does).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if let Some(normed) = crate::fused::rms_norm(&x, &self.weight.val(), self.eps) {
            return normed;
        }
        let x = x.cast(FloatDType::F32);
        // `powf(-0.5)` is one kernel (libtorch runs it as `rsqrt`) where `sqrt().recip()` is two;
        // a decode step runs six norms per layer.
        let inverse_rms = (x.clone().square().mean_dim(D - 1) + self.eps).powf_scalar(-0.5);
        let gain = self.weight.val() + 1.0;
        x * inverse_rms * gain.unsqueeze::<D>()
    }
}

/// The `gelu_pytorch_tanh` activation both Gemma and SigLIP use,
/// `0.5 x (1 + tanh(z))` with `z = √(2/π) (x + 0.044715 x³)`, computed as the identical
/// `x / (1 + exp(−2z))` with `−2z = x (a + b x²)`: one `exp` and products instead of `tanh` and
/// `powf`, which are several times slower on the CPU, and eight kernels (a launch each on a GPU,
/// 34 layers deep at every decode step). The backend's sigmoid would take six, but flex runs it
/// element by element, which made the CPU GRPO step 8% slower.
///
/// The exponent is capped at 80: below x ≈ −10.5 it would overflow f32 to infinity, which the
/// forward pass survives (x / ∞ = 0) but the backward does not (∞ · 0 = NaN in the gradient of
/// every earlier layer). At the cap the output is x · e⁻⁸⁰, zero to f32 precision as the exact
/// value is.
///
/// A bf16 input is activated in f32 and rounded once, as PyTorch's bf16 `gelu` kernel does.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if let Some(activated) = crate::fused::gelu_tanh(&x) {
        return activated;
    }
    const LINEAR: f64 = -2.0 * 0.797_884_560_802_865_4;
    const CUBIC: f64 = LINEAR * 0.044715;
    let dtype = x.dtype();
    let x = x.cast(FloatDType::F32);
    let exponent = (x.clone() * (x.clone().square() * CUBIC + LINEAR)).clamp_max(80.0);
    (x / (exponent.exp() + 1.0)).cast(dtype)
}

/// `x · weight (+ bias)` computed in the weight's dtype and returned in `x`'s: a bf16 weight
/// gets a bf16 product of an f32 input, as under autocast. The bias is added in `x`'s dtype.
pub fn product<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let (input, compute) = (x.dtype(), weight.dtype());
    let y = if input == compute {
        burn::tensor::module::linear(x, weight, None)
    } else {
        burn::tensor::module::linear(x.cast(compute), weight, None).cast(input)
    };
    match bias {
        Some(bias) => y + bias.cast(input).unsqueeze(),
        None => y,
    }
}

/// LoRA settings for one linear layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraShape {
    /// Rank `r` of the update.
    pub rank: usize,
    /// Scaling numerator: the update is multiplied by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input during training.
    pub dropout: f64,
}

/// The low-rank update `dropout(x) · A · B · alpha/r` of one linear layer.
#[derive(Module, Debug)]
pub struct LoraWeights {
    /// Down projection, `[d_in, r]` (PEFT's `lora_A.weight` transposed).
    pub a: Param<Tensor<2>>,
    /// Up projection, `[r, d_out]` (PEFT's `lora_B.weight` transposed); zero at creation.
    pub b: Param<Tensor<2>>,
    /// `alpha / r`.
    pub scale: f64,
    /// Input dropout (active only in training on an autodiff device).
    pub dropout: Dropout,
}

impl LoraWeights {
    /// `dropout(x) · A · B · alpha/r` in `x`'s dtype. The dropout's `1/keep` rescaling is
    /// folded into `alpha/r` on the rank-r product instead of costing a pass over `x`.
    pub fn update<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let compute = x.dtype();
        let (x, keep) = lora_dropout(x, &self.dropout);
        let down = burn::tensor::module::linear(x, self.a.val().cast(compute), None);
        let down = down * (self.scale / keep);
        burn::tensor::module::linear(down, self.b.val().cast(compute), None)
    }
}

/// `x` times the Bernoulli mask `dropout` draws for it, unscaled, with the fraction kept
/// (`(x, 1)` when it draws nothing: outside training, off autodiff, or at probability 0, as
/// burn's `Dropout`). The mask is drawn as an f32 tensor of `x`'s shape whatever `x`'s dtype,
/// so a bf16 model draws what an f32 one does (and what `crate::fused::autograd` draws); a
/// mask of zeros and ones is exact in any dtype.
pub fn lora_dropout<const D: usize>(x: Tensor<D>, dropout: &Dropout) -> (Tensor<D>, f64) {
    let device = x.device();
    if !dropout.training.is_enabled() || !device.is_autodiff() || dropout.prob == 0.0 {
        return (x, 1.0);
    }
    let keep = 1.0 - dropout.prob;
    let mask = Tensor::<D>::random(
        x.shape(),
        burn::tensor::Distribution::Bernoulli(keep),
        (&device, DType::F32),
    );
    let compute = x.dtype();
    (x * mask.cast(compute), keep)
}

/// A linear layer `y = x W + b` whose weight may carry a LoRA update.
///
/// The weight is stored `[d_in, d_out]` (burn's layout); import and export transpose it to
/// and from PyTorch's `[d_out, d_in]`.
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// `[d_in, d_out]`.
    pub weight: Param<Tensor<2>>,
    /// `[d_out]`, when the layer has one.
    pub bias: Option<Param<Tensor<1>>>,
    /// The adapter, when LoRA is attached.
    pub lora: Option<LoraWeights>,
}

impl LoraLinear {
    /// A layer initialised like `transformers` does (normal, std `init_std`), bias zero.
    pub fn new(d_in: usize, d_out: usize, bias: bool, init_std: f64, device: &Device) -> Self {
        let weight = Initializer::Normal {
            mean: 0.0,
            std: init_std,
        }
        .init([d_in, d_out], device);
        Self {
            weight,
            bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_out], device))),
            lora: None,
        }
    }

    /// Input and output widths.
    pub fn dims(&self) -> [usize; 2] {
        self.weight.dims()
    }

    /// Apply the layer to `[..., d_in]`. The product runs in the weight's dtype and the
    /// result comes back in the input's (see [`crate::precision`]), so a caller that already
    /// holds a bf16 input gets a bf16 product without a cast either way. An adapter's products
    /// run in the weight's dtype too, from its f32 parameters cast for them, and its update
    /// is added to the base product in that dtype: what PyTorch's autocast computes for PEFT's
    /// f32 adapters (PEFT alone would widen to f32 and cast the sum back, moving twice the
    /// bytes of every activation for one rounding less).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let bias = self.bias.as_ref().map(|b| b.val());
        let Some(lora) = &self.lora else {
            return product(x, self.weight.val(), bias);
        };
        let (input, compute) = (x.dtype(), self.weight.val().dtype());
        let x = x.cast(compute);
        let base = product(x.clone(), self.weight.val(), bias);
        (base + lora.update(x)).cast(input)
    }

    /// Attach a fresh adapter initialised as PEFT does: A uniform in ±1/√d_in (its
    /// Kaiming-uniform default) and B = 0, so the output is unchanged until training moves it.
    /// A is drawn on the host from `seed`, so the same seed gives the same adapter on every
    /// backend (burn's own generators draw differently per backend).
    pub fn attach_lora(mut self, shape: LoraShape, seed: u64, device: &Device) -> Self {
        let [d_in, d_out] = self.dims();
        let bound = (1.0 / d_in as f64).sqrt() as f32;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let values: Vec<f32> = (0..d_in * shape.rank)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Tensor::from_data(TensorData::new(values, [d_in, shape.rank]), device);
        let b = Tensor::zeros([shape.rank, d_out], device);
        self.weight = self.weight.set_require_grad(false);
        self.bias = self.bias.map(|b| b.set_require_grad(false));
        self.lora = Some(LoraWeights {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            scale: shape.alpha / shape.rank as f64,
            dropout: DropoutConfig::new(shape.dropout).init(),
        });
        self
    }

    /// Fold the adapter into the weight and drop it. The sum is taken in f32 and stored back
    /// in the weight's dtype, as PEFT merges into a bf16 model.
    pub fn merge_lora(mut self) -> Self {
        if let Some(lora) = self.lora.take() {
            let weight = self.weight.val().detach();
            let dtype = weight.dtype();
            let delta = lora.a.val().matmul(lora.b.val()) * lora.scale;
            let merged = (weight.cast(FloatDType::F32) + delta.detach()).cast(dtype);
            self.weight = Param::from_tensor(merged);
        }
        self
    }
}
