//! Mixed precision as PyTorch's autocast and PEFT arrange it: the weights that feed matrix
//! products (every projection, the token embedding and tied head, the multimodal projection)
//! are held in bf16 and their products run in bf16, while the residual stream, every norm,
//! RoPE, softmax, the logit soft-cap, log-softmax, the losses, LoRA adapters and optimizer
//! state stay in f32.
//!
//! Between a product and the next, activations stay in the products' dtype, as in transformers'
//! bf16 model: the MLP's GELU (computed in f32 and rounded once, as PyTorch's bf16 kernel does)
//! and its gating product. An adapter's f32 parameters are cast for its two products, which run
//! in bf16 as autocast runs them, and its update is added to the base product in bf16; its
//! gradients reach the f32 parameters through those casts. So the MLP's `[tokens,
//! intermediate]` activations, the largest a training step keeps and moves, are bf16 (on
//! libtorch; burn's own GELU passes through f32 temporaries).
//!
//! A layer computes in the precision its weight is stored in, so the model carries no
//! separate switch: [`Gemma3ForConditionalGeneration::with_dtype`] casts the weights, and
//! [`Gemma3ForConditionalGeneration::dtype`] reads the choice back. Parts trained in full (no
//! LoRA) are cast back to f32 by the trainer, so the optimizer updates f32 masters; their
//! products then run in f32 as well.
//!
//! f16 is refused: Gemma 3's activations exceed f16's largest value (65,504) — the reason
//! Google and transformers run it in bf16 or f32.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Device, FloatDType, Tensor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::device::DeviceChoice;
use crate::error::ModelError;
use crate::vlm::Gemma3ForConditionalGeneration;

/// The precision of the model's matrix-product weights (`model.dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelDtype {
    /// Everything in f32.
    F32,
    /// Matrix-product weights and products in bf16, the rest in f32.
    Bf16,
}

impl ModelDtype {
    /// The default for a device: bf16 on GPUs, f32 on CPUs (where flex computes bf16 products
    /// through f32 copies and gains no time).
    pub fn default_for(device: DeviceChoice) -> Self {
        match device {
            DeviceChoice::TchCuda(_) | DeviceChoice::Cuda(_) => Self::Bf16,
            DeviceChoice::Cpu | DeviceChoice::NdArray | DeviceChoice::TchCpu => Self::F32,
        }
    }

    /// The tensor dtype of the matrix-product weights.
    pub fn float_dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::Bf16 => FloatDType::BF16,
        }
    }

    /// Bytes of one matrix-product weight.
    pub fn bytes(self) -> f64 {
        match self {
            Self::F32 => 4.0,
            Self::Bf16 => 2.0,
        }
    }

    /// Refuses a precision the device's backend cannot compute in (burn's ndarray has no bf16).
    pub fn ensure_supported(self, device: &Device) -> Result<(), ModelError> {
        if self == Self::F32 || device.supports_dtype(self.float_dtype()) {
            return Ok(());
        }
        Err(ModelError::Precision(format!(
            "model.dtype = \"{self}\" is not supported by the backend of {device:?}; use \"f32\" \
             or another backend (cpu, tch-cpu and the GPU backends compute in bf16)"
        )))
    }
}

impl fmt::Display for ModelDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

impl FromStr for ModelDtype {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" | "fp16" | "half" => Err(ModelError::Precision(format!(
                "`{s}` is refused for Gemma 3: its activations exceed f16's largest value \
                 (65,504) and turn into inf and NaN; use \"bf16\" (same range as f32) or \"f32\""
            ))),
            _ => Err(ModelError::Precision(format!(
                "unknown dtype `{s}` (use \"bf16\" or \"f32\")"
            ))),
        }
    }
}

impl Serialize for ModelDtype {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ModelDtype {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether the parameter at `path` (module fields joined by dots, from the model or from one of
/// its parts) feeds a matrix product without being a [`LoraLinear`](crate::layers::LoraLinear)
/// weight: the token embedding (also the tied output head) and the multimodal projection.
pub fn is_product_weight(path: &str) -> bool {
    path.ends_with("embed_tokens.weight") || path.ends_with("mm_input_projection_weight")
}

/// Casts parameters by path: matrix-product weights to `product`, everything else to f32.
struct CastParameters {
    /// Field names from the module walked down to the current one.
    path: Vec<String>,
    /// For each entered field, whether its container is a `LoraLinear`.
    in_linear: Vec<bool>,
    product: FloatDType,
}

impl ModuleMapper for CastParameters {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.in_linear.push(container_type == "Struct:LoraLinear");
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.in_linear.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // burn enters each field with the type of the struct holding it, so the last entry
        // names this parameter and says whether a linear layer holds it.
        let linear_weight = self.in_linear.last() == Some(&true)
            && self.path.last().map(String::as_str) == Some("weight");
        let target = if linear_weight || is_product_weight(&self.path.join(".")) {
            self.product
        } else {
            FloatDType::F32
        };
        if param.val().dtype() == DType::from(target) {
            return param;
        }
        param.map(|tensor| tensor.cast(target))
    }
}

/// `module` (the model or any part of it) with its matrix-product weights in `dtype` and every
/// other parameter in f32.
pub fn cast_parameters<M: Module>(module: M, dtype: ModelDtype) -> M {
    module.map(&mut CastParameters {
        path: Vec::new(),
        in_linear: Vec::new(),
        product: dtype.float_dtype(),
    })
}

impl Gemma3ForConditionalGeneration {
    /// The precision the model computes in, read from its first decoder projection.
    pub fn dtype(&self) -> ModelDtype {
        let weight = self
            .model
            .language_model
            .layers
            .first()
            .map(|l| l.self_attn.k_proj.weight.val().dtype());
        match weight {
            Some(DType::BF16) => ModelDtype::Bf16,
            _ => ModelDtype::F32,
        }
    }

    /// Every matrix-product weight cast to `dtype` and every other parameter to f32 (also what
    /// a checkpoint saved in bf16 by transformers needs: its norms come in bf16 too).
    pub fn with_dtype(self, dtype: ModelDtype) -> Self {
        cast_parameters(self, dtype)
    }
}
