//! The chex-grpo vision-language model: a SigLIP vision tower, Gemma 3's multimodal projector
//! and a Gemma 3 decoder ([`vlm`]), configurable from a CPU-sized preset to MedGemma-4B's
//! shapes ([`config`]); fast batched generation with a key/value cache ([`generation`],
//! [`cache`], [`sampling`], with libtorch's fused kernels and a fused decode step where they
//! apply: [`fused`]); teacher-forced scoring for the GRPO loss ([`scoring`], the output head a
//! block of the vocabulary at a time: [`head`]) and for training, with gradient checkpointing
//! ([`checkpointing`]); LoRA with PEFT's file layout ([`lora`]);
//! Hugging Face checkpoint import ([`checkpoint`]); tokenizers ([`tokenizer`]) and prompt
//! assembly ([`prompt`]); the run-time choice of burn backend ([`device`]); bf16 or f32
//! weights ([`precision`]); a memory estimate made before any allocation ([`memory`]); and
//! PyTorch's profiler around libtorch work ([`profiler`]).
//!
//! ```
//! use chex_model::{Gemma3Config, Gemma3ForConditionalGeneration, select_device};
//! let device = select_device("cpu")?;
//! let config = Gemma3Config::preset("tiny")?;
//! let model = Gemma3ForConditionalGeneration::new(&config, &device);
//! let counts = config.parameter_counts();
//! assert_eq!(burn::module::Module::num_params(&model), counts.total());
//! # Ok::<(), chex_model::ModelError>(())
//! ```

pub mod cache;
pub mod checkpoint;
pub mod checkpointing;
pub mod config;
pub mod device;
pub mod error;
pub mod fused;
pub mod generation;
pub mod head;
pub mod layers;
pub mod lora;
pub mod mask;
pub mod memory;
pub mod precision;
pub mod profiler;
pub mod prompt;
pub mod rope;
pub mod sampling;
pub mod scoring;
pub mod text;
pub mod tokenizer;
pub mod vision;
pub mod vlm;

pub use burn;
pub use config::{Gemma3Config, LayerKind, ParameterCounts, TextConfig, VisionConfig};
pub use device::{DeviceChoice, compiled_backends, select_device};
pub use error::ModelError;
pub use memory::MemoryEstimate;
pub use precision::ModelDtype;
pub use tokenizer::ChexTokenizer;
pub use vlm::{Gemma3ForConditionalGeneration, ImageInputs};
