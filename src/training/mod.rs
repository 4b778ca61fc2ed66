//! The SFT and GRPO trainers and what they share: training examples and the policy, the
//! [`Stage`](stage::Stage) that owns a run's checkpoints, log, progress and resume, the
//! optimizer and learning-rate schedule settings, global gradient-norm clipping, and the typed
//! log records the report reads back.
//!
//! One GRPO step is a [`rollout`](grpo::rollout::rollout) (generate, decode, reward) that
//! returns a [`RolloutBatch`](grpo::RolloutBatch), then an [`update`](grpo::update::update) (μ
//! policy updates on it) that returns [`UpdateStats`](grpo::UpdateStats), then logging and
//! validation through the stage — the phases of TRL's `GRPOTrainer`.

use chex_model::burn::module::Module;
use chex_model::burn::tensor::Device;
use chex_model::lora::{LoraConfig, apply_lora};
use chex_model::precision::cast_parameters;
use chex_model::vlm::Gemma3Model;
use chex_model::{Gemma3ForConditionalGeneration, ModelDtype};

pub mod checkpoint;
pub mod examples;
pub mod grpo;
pub mod log;
pub mod optim;
pub mod records;
pub mod schedule;
pub mod sft;
pub mod stage;
pub mod tensorboard;

pub use examples::{Example, Policy};
pub use grpo::{GrpoConfig, GrpoOutcome, RolloutBatch, UpdateStats, train_grpo, train_grpo_with};
pub use optim::OptimizerConfig;
pub use schedule::{LrSchedule, ScheduleKind};
pub use sft::{SftConfig, SftOutcome, train_sft, train_supervised};

/// A seed for one purpose at one step, so that a resumed run draws what the uninterrupted run
/// drew.
pub fn step_seed(seed: u64, step: u64, purpose: u64) -> u64 {
    let mut x = seed
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ purpose.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

/// Refuse `value` unless `ok`; `key` is the setting's full name.
pub(crate) fn ensure(ok: bool, key: &str, message: impl Into<String>) -> crate::Result<()> {
    if ok {
        Ok(())
    } else {
        Err(crate::Error::setting(key, message))
    }
}

/// A learning rate must be finite and non-negative (0 freezes the weights, for tests).
pub(crate) fn ensure_learning_rate(value: f64, key: &str) -> crate::Result<()> {
    ensure(
        value.is_finite() && value >= 0.0,
        key,
        format!("must be a finite number ≥ 0, got {value}"),
    )
}

/// Refuse adapter settings out of range.
pub(crate) fn validate_lora(
    lora: &chex_model::lora::LoraConfig,
    section: &str,
) -> crate::Result<()> {
    ensure(lora.rank > 0, &format!("{section}.rank"), "must be > 0")?;
    ensure(
        lora.alpha.is_finite() && lora.alpha > 0.0,
        &format!("{section}.alpha"),
        format!("must be > 0, got {}", lora.alpha),
    )?;
    ensure(
        (0.0..1.0).contains(&lora.dropout),
        &format!("{section}.dropout"),
        format!("must lie in [0, 1), got {}", lora.dropout),
    )
}

/// `model` made trainable on [`training_device`]: the vision tower frozen when asked, fresh
/// adapters attached when `lora` is given, then moved, in training mode. Freezing and adapters
/// come before the move, on the plain device.
///
/// With bf16 weights (see [`chex_model::precision`]), parts trained in full — everything but a
/// frozen vision tower when there is no LoRA — go back to f32, so the optimizer updates f32
/// masters; frozen weights stay bf16. Adapters are f32 already.
pub fn trainable_model(
    model: Gemma3ForConditionalGeneration,
    freeze_vision: bool,
    lora: Option<&LoraConfig>,
    seed: u64,
    device: &Device,
) -> Gemma3ForConditionalGeneration {
    let mut model = model.to_device(device);
    if lora.is_none() {
        if freeze_vision {
            let parts = model.model;
            model.model = Gemma3Model {
                language_model: cast_parameters(parts.language_model, ModelDtype::F32),
                multi_modal_projector: cast_parameters(
                    parts.multi_modal_projector,
                    ModelDtype::F32,
                ),
                ..parts
            };
            model.lm_head = cast_parameters(model.lm_head, ModelDtype::F32);
        } else {
            model = model.with_dtype(ModelDtype::F32);
        }
    }
    if freeze_vision {
        model.model.vision_tower = model.model.vision_tower.freeze();
    }
    if let Some(lora) = lora {
        model = apply_lora(model, lora, seed, device);
    }
    model.to_device(&training_device(device)).train()
}

/// The device `model`'s parameters live on: for a trainable model, its autodiff twin with the
/// checkpointing strategy it was given, which every tensor meeting it must share.
pub(crate) fn device_of(model: &Gemma3ForConditionalGeneration) -> Device {
    model
        .devices()
        .into_iter()
        .next()
        .expect("a model has parameters")
}

/// The autodiff twin of `device` that training runs on.
pub fn training_device(device: &Device) -> Device {
    device.clone().autodiff()
}

/// Whether a trainer checkpoints each decoder layer (see [`chex_model::checkpointing`]): the
/// setting when given, else on for GPUs, where activations bound the batch, and off for CPUs.
pub fn checkpointing_on(setting: Option<bool>, device: &Device) -> bool {
    setting.unwrap_or_else(|| chex_model::device::is_accelerator(device))
}
