//! Step-level parity with TRL. `scripts/make_trl_step_fixture.py` ran TRL's own
//! `GRPOTrainer._compute_loss` (and one SFT step) on the tiny transformers fixture model with a
//! PEFT adapter, fixed prompts with images, fixed completions and fixed rewards; here our
//! trainer's update runs on the same inputs, on every backend under test, and must reproduce
//! the loss, `kl`, `entropy`, the clip ratios and the gradient of every adapter tensor, for
//! grpo / bnpo / dr_grpo / dapo at μ = 1 and μ = 2 (with the AdamW step between the updates),
//! with top-entropy masking, with truncated completions masked, and with the batch split into
//! two micro-batches whose gradients accumulate.
//!
//! Tolerance: 1e-5 relative. For a gradient tensor that is ‖ours − TRL's‖ / ‖TRL's‖; for a
//! scalar, |ours − TRL's| / max(|TRL's|, floor), with floor 1e-3 for `kl` and `entropy` and the
//! advantages' scale (0.1) for the loss, which is a difference of terms of that size and so
//! rounds relative to them, not to itself. Clip ratios are counts of tokens and must match
//! exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chex_grpo::model::Gemma3ForConditionalGeneration;
use chex_grpo::model::burn::tensor::{Device, Tensor, TensorData};
use chex_grpo::model::checkpoint::from_pretrained;
use chex_grpo::model::device::{DeviceChoice, on_every_test_device};
use chex_grpo::model::lora::{for_each_linear, load_adapter};
use chex_grpo::model::scoring::ScoringRow;
use chex_grpo::objective::{AdvantageScaling, GrpoLossConfig, LossType};
use chex_grpo::training::grpo::update::update;
use chex_grpo::training::grpo::{
    GrpoConfig, Reference, RolloutBatch, RolloutRow, UpdateSettings, training_model,
};
use chex_grpo::training::optim::OptimizerConfig;
use chex_grpo::training::sft::completion_loss;
use serde::Deserialize;

#[derive(Deserialize)]
struct Update {
    loss: f64,
    kl: f64,
    entropy: f64,
    clip_low: f64,
    clip_high: f64,
    clip_region: f64,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    loss_type: LossType,
    mu: usize,
    top_entropy_quantile: f64,
    mask_truncated_completions: bool,
    #[serde(default)]
    micro_batch: usize,
    updates: Vec<Update>,
}

#[derive(Deserialize)]
struct SftCase {
    loss: f64,
}

#[derive(Deserialize)]
struct Fixture {
    prompts_of_rows: Vec<usize>,
    completions: Vec<Vec<u32>>,
    truncated: Vec<bool>,
    rewards: Vec<f64>,
    group_size: usize,
    max_completion_length: usize,
    temperature: f32,
    learning_rate: f64,
    max_grad_norm: f64,
    beta: f64,
    epsilon_low: f64,
    epsilon_high: f64,
    cases: Vec<Case>,
    sft: SftCase,
}

#[derive(Deserialize)]
struct ModelExpectations {
    input_ids: Vec<Vec<u32>>,
}

const IMAGE_TOKEN: u32 = 8;

/// burn's generator is per process: the tests that draw from it run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Run `check` on every backend under test; an `Err` fails the test naming the backend.
fn each_backend(check: impl Fn(DeviceChoice, &Device) -> Result<(), String>) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    on_every_test_device(|choice, device| {
        if let Err(e) = check(choice, device) {
            panic!("{e}");
        }
    });
}

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn model_fixture() -> PathBuf {
    std::env::var_os("CHEX_MODEL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| here().join("crates/chex-model/tests/fixtures"))
        .join("gemma3_tiny")
}

/// `tests/fixtures/trl_step`, or `CHEX_TRL_STEP_FIXTURE` (a bundle run on another machine).
fn step_fixture() -> PathBuf {
    std::env::var_os("CHEX_TRL_STEP_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| here().join("tests/fixtures/trl_step"))
}

fn read_fixture() -> Fixture {
    let text = std::fs::read_to_string(step_fixture().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// TRL's gradients: `{case}/{update}/{PEFT key}` → values and shape.
fn trl_gradients() -> BTreeMap<String, (Vec<f32>, Vec<usize>)> {
    let bytes = std::fs::read(step_fixture().join("gradients.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (values, view.shape().to_vec()))
        })
        .collect()
}

fn pixels() -> TensorData {
    let bytes = std::fs::read(model_fixture().join("expected.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = file.tensor("pixel_values").unwrap();
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    TensorData::new(values, view.shape().to_vec())
}

fn prompts() -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(model_fixture().join("expected.json")).unwrap();
    serde_json::from_str::<ModelExpectations>(&text)
        .unwrap()
        .input_ids
}

fn image_block(prompt: &[u32]) -> std::ops::Range<usize> {
    let first = prompt.iter().position(|&t| t == IMAGE_TOKEN).unwrap();
    let count = prompt.iter().filter(|&&t| t == IMAGE_TOKEN).count();
    first..first + count
}

/// The fixture's rollouts as our trainer's batch.
fn rollout_batch(fx: &Fixture) -> RolloutBatch {
    let prompts = prompts();
    let rows = fx
        .completions
        .iter()
        .enumerate()
        .map(|(i, completion)| {
            let prompt = prompts[fx.prompts_of_rows[i]].clone();
            RolloutRow {
                image_block: Some(image_block(&prompt)),
                prompt,
                image: fx.prompts_of_rows[i],
                completion: completion.clone(),
                truncated: fx.truncated[i],
                reward: fx.rewards[i],
                text: String::new(),
                source: PathBuf::new(),
                truth: Vec::new(),
            }
        })
        .collect();
    RolloutBatch {
        rows,
        pixels: Some(pixels()),
        group_size: fx.group_size,
        components: Vec::new(),
        frac_reward_zero_std: 0.0,
    }
}

/// The fixture model with the fixture's adapter (its dropout 0.1 is in the adapter's config).
fn adapted_model(device: &Device) -> Gemma3ForConditionalGeneration {
    let base = from_pretrained(&model_fixture(), device).unwrap();
    load_adapter(base, &step_fixture().join("adapter"), device)
        .unwrap()
        .0
}

/// Every adapter gradient in PEFT's naming and layout (`[r, d_in]` and `[d_out, r]`).
fn adapter_gradients(
    model: &Gemma3ForConditionalGeneration,
    grads: &chex_grpo::model::burn::optim::GradientsParams,
) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    let mut model = model.clone();
    let _ = for_each_linear(&mut model, &mut |path, linear| {
        if let Some(lora) = &linear.lora {
            for (factor, id) in [("lora_A", lora.a.id), ("lora_B", lora.b.id)] {
                if let Some(g) = grads.get::<2>(id) {
                    let values = g.transpose().into_data().convert::<f32>();
                    out.insert(
                        format!("base_model.model.{path}.{factor}.weight"),
                        values.try_to_vec::<f32>().unwrap(),
                    );
                }
            }
        }
        Ok(())
    });
    out
}

/// `|ours − theirs| / max(|theirs|, floor) < 1e-5`.
fn scalar_close(what: &str, ours: f64, theirs: f64, floor: f64) -> Result<(), String> {
    let relative = (ours - theirs).abs() / theirs.abs().max(floor);
    if relative < 1e-5 {
        Ok(())
    } else {
        Err(format!(
            "{what}: ours {ours} vs TRL {theirs} ({relative:e} relative)"
        ))
    }
}

fn gradients_close(
    what: &str,
    ours: &BTreeMap<String, Vec<f32>>,
    theirs: &BTreeMap<String, (Vec<f32>, Vec<usize>)>,
    prefix: &str,
) -> Result<f64, String> {
    let expected: Vec<_> = theirs
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|key| (key.to_string(), v)))
        .collect();
    if expected.len() != ours.len() || expected.is_empty() {
        return Err(format!(
            "{what}: {} adapter gradients here, {} in TRL's fixture",
            ours.len(),
            expected.len()
        ));
    }
    let mut worst = 0.0f64;
    for (key, (values, _)) in expected {
        let mine = ours
            .get(&key)
            .ok_or_else(|| format!("{what}: no gradient for {key}"))?;
        let diff: f64 = mine
            .iter()
            .zip(values)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = values
            .iter()
            .map(|b| (*b as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let relative = diff / norm.max(1e-12);
        worst = if relative.is_nan() {
            relative
        } else {
            worst.max(relative)
        };
        // Written so that a NaN gradient fails.
        if relative.is_nan() || relative >= 1e-5 {
            return Err(format!(
                "{what}: gradient of {key} differs from TRL's by {relative:e} relative"
            ));
        }
    }
    Ok(worst)
}

#[test]
fn grpo_updates_match_trl_for_every_loss_type_at_mu_1_and_2() {
    let fx = read_fixture();
    let theirs = trl_gradients();
    let batch = rollout_batch(&fx);
    each_backend(|choice, device| {
        // Gradient checkpointing recomputes activations in the backward pass: the gradients
        // must not change.
        for (case, checkpointing) in fx.cases.iter().flat_map(|c| [(c, false), (c, true)]) {
            let config = GrpoConfig {
                lora: None,
                gradient_checkpointing: Some(checkpointing),
                ..GrpoConfig::chexreason()
            };
            let model = training_model(adapted_model(device), &config, device);
            let loss = GrpoLossConfig {
                epsilon_low: fx.epsilon_low,
                epsilon_high: fx.epsilon_high,
                beta: fx.beta,
                loss_type: case.loss_type,
                top_entropy_quantile: case.top_entropy_quantile,
                max_completion_length: fx.max_completion_length,
                ..GrpoLossConfig::default()
            };
            let learning_rates = vec![fx.learning_rate; case.mu];
            let settings = UpdateSettings {
                loss: &loss,
                temperature: fx.temperature,
                scale_rewards: AdvantageScaling::Group,
                mask_truncated_completions: case.mask_truncated_completions,
                max_grad_norm: fx.max_grad_norm,
                learning_rates: &learning_rates,
                micro_batch: case.micro_batch,
                gradient_checkpointing: Some(checkpointing),
            };
            let mut optimizer = OptimizerConfig::default().init();
            let mut gradients = Vec::new();
            let (_, stats) = update(
                model,
                &mut optimizer,
                &batch,
                &settings,
                Reference::WithoutAdapters,
                device,
                &mut |_, model, grads| gradients.push(adapter_gradients(model, grads)),
            )
            .map_err(|e| e.to_string())?;
            for (i, (ours, trl)) in stats.iter().zip(&case.updates).enumerate() {
                let what = |m: &str| {
                    format!(
                        "{choice} {}{} update {i} {m}",
                        case.name,
                        if checkpointing { " (checkpointed)" } else { "" }
                    )
                };
                // The loss is a mean of per-token terms of the advantages' size (about 0.7 here)
                // that nearly cancel, since advantages sum to zero within a group: its rounding
                // is relative to them.
                scalar_close(&what("loss"), ours.loss, trl.loss, 0.1)?;
                scalar_close(&what("kl"), ours.kl.unwrap(), trl.kl, 1e-3)?;
                scalar_close(&what("entropy"), ours.entropy.unwrap(), trl.entropy, 1e-3)?;
                for (m, a, b) in [
                    ("clip_ratio/low_mean", ours.clip_low, trl.clip_low),
                    ("clip_ratio/high_mean", ours.clip_high, trl.clip_high),
                    ("clip_ratio/region_mean", ours.clip_region, trl.clip_region),
                ] {
                    if (a - b).abs() > 1e-6 {
                        return Err(format!("{}: ours {a} vs TRL {b}", what(m)));
                    }
                }
                let worst = gradients_close(
                    &what("gradients"),
                    &gradients[i],
                    &theirs,
                    &format!("{}/{i}/", case.name),
                )?;
                println!(
                    "{}: loss {:.6} (TRL {:.6}), worst {worst:.1e}",
                    what("gradients"),
                    ours.loss,
                    trl.loss
                );
            }
            if stats.len() != case.updates.len() {
                return Err(format!(
                    "{}: {} updates, TRL took {}",
                    case.name,
                    stats.len(),
                    case.updates.len()
                ));
            }
        }
        Ok(())
    });
}

#[test]
fn one_sft_step_matches_trl_completion_only_loss() {
    let fx = read_fixture();
    let theirs = trl_gradients();
    let prompts = prompts();
    each_backend(|choice, device| {
        let ad = device.clone().autodiff();
        // SFT keeps dropout; one pass compares only without it.
        let config = GrpoConfig {
            lora: None,
            ..GrpoConfig::chexreason()
        };
        let model = training_model(adapted_model(device), &config, device);
        let blocks: Vec<_> = prompts.iter().map(|p| image_block(p)).collect();
        let rows: Vec<ScoringRow> = fx
            .completions
            .iter()
            .enumerate()
            .map(|(i, c)| ScoringRow {
                prompt: &prompts[fx.prompts_of_rows[i]],
                image_block: Some(&blocks[fx.prompts_of_rows[i]]),
                completion: c,
            })
            .collect();
        // Checkpointing each decoder layer reruns it in the backward pass: the gradients must
        // not change.
        for checkpointing in [false, true] {
            let (loss, graph) = completion_loss(
                &model,
                &rows,
                Tensor::<4>::from_data(pixels(), &ad),
                &fx.prompts_of_rows,
                checkpointing,
                &ad,
            )
            .map_err(|e| e.to_string())?;
            let value = loss.clone().into_scalar::<f32>() as f64;
            let what = format!("{choice} SFT (checkpointing {checkpointing})");
            scalar_close(&format!("{what} loss"), value, fx.sft.loss, 1e-3)?;
            let grads = graph.gradients(loss, &model);
            let worst =
                gradients_close(&what, &adapter_gradients(&model, &grads), &theirs, "sft/0/")?;
            println!(
                "{what}: loss {value:.6} (TRL {:.6}), worst gradient {worst:.1e}",
                fx.sft.loss
            );
        }
        Ok(())
    });
}

/// One update per learning rate at temperature 1, group scaling, the whole batch at once.
fn plain_settings<'a>(loss: &'a GrpoLossConfig, rates: &'a [f64]) -> UpdateSettings<'a> {
    UpdateSettings {
        loss,
        temperature: 1.0,
        scale_rewards: AdvantageScaling::Group,
        mask_truncated_completions: false,
        max_grad_norm: 1.0,
        learning_rates: rates,
        micro_batch: 0,
        gradient_checkpointing: None,
    }
}

/// At β = 0 TRL builds no reference; a reference that cannot even run is never asked.
#[test]
fn no_reference_pass_at_beta_zero() {
    let fx = read_fixture();
    let batch = rollout_batch(&fx);
    each_backend(|_, device| {
        let config = GrpoConfig {
            lora: None,
            ..GrpoConfig::chexreason()
        };
        let model = training_model(adapted_model(device), &config, device);
        // A reference whose vision tower expects another image size fails on these pixels.
        let mut other =
            chex_grpo::model::Gemma3Config::from_file(&model_fixture().join("config.json"))
                .map_err(|e| e.to_string())?;
        other.vision_config.image_size = 64;
        let broken = Gemma3ForConditionalGeneration::new(&other, device);
        let run = |beta: f64| {
            let loss = GrpoLossConfig {
                beta,
                max_completion_length: fx.max_completion_length,
                ..GrpoLossConfig::default()
            };
            update(
                model.clone(),
                &mut OptimizerConfig::default().init(),
                &batch,
                &plain_settings(&loss, &[0.0]),
                Reference::Frozen(&broken),
                device,
                &mut |_, _, _| {},
            )
        };
        let (_, stats) = run(0.0).map_err(|e| format!("β = 0 ran the reference: {e}"))?;
        if stats[0].kl.is_some() {
            return Err("β = 0 reported a kl".into());
        }
        if run(0.15).is_ok() {
            return Err("β > 0 did not run the reference".into());
        }
        Ok(())
    });
}

/// With `disable_dropout` (the default) the policy scores the same completions identically on
/// every pass, whatever the adapters' configured dropout; without it, dropout draws differ.
#[test]
fn dropout_is_off_while_grpo_scores_unless_asked_for() {
    let fx = read_fixture();
    let batch = rollout_batch(&fx);
    each_backend(|_, device| {
        let first_update_loss = |disable_dropout: bool, seed: u64| -> Result<f64, String> {
            let config = GrpoConfig {
                lora: None,
                disable_dropout,
                ..GrpoConfig::chexreason()
            };
            let model = training_model(adapted_model(device), &config, device);
            device.clone().autodiff().seed(seed);
            let loss = GrpoLossConfig {
                max_completion_length: fx.max_completion_length,
                ..GrpoLossConfig::default()
            };
            // μ = 2: the first update compares the policy with its own dropout-free scores.
            let (_, stats) = update(
                model,
                &mut OptimizerConfig::default().init(),
                &batch,
                &plain_settings(&loss, &[0.0, 0.0]),
                Reference::WithoutAdapters,
                device,
                &mut |_, _, _| {},
            )
            .map_err(|e| e.to_string())?;
            if disable_dropout && stats[0].clip_region != 0.0 {
                return Err(format!(
                    "ratio is not 1 at the first update: clip region {}",
                    stats[0].clip_region
                ));
            }
            Ok(stats[0].loss)
        };
        let (a, b) = (first_update_loss(true, 1)?, first_update_loss(true, 2)?);
        if a != b {
            return Err(format!(
                "dropout off, yet the loss depends on the seed: {a} vs {b}"
            ));
        }
        let (c, d) = (first_update_loss(false, 1)?, first_update_loss(false, 2)?);
        if c == d {
            return Err(format!(
                "dropout asked for, yet two seeds gave the same loss {c}"
            ));
        }
        Ok(())
    });
}
