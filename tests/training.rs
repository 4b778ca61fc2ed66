//! Trainer behaviour at a miniature size: SFT lowers the validation loss; a run stopped after
//! one epoch and resumed ends with exactly the weights of the uninterrupted run; a truncated
//! checkpoint is refused while the previous one stays usable; GRPO logs TRL's metric names and
//! starts at zero KL; the same imported weights give the same validation loss on every backend.
//! Each numerical test runs on every backend under test (`chex_model::device::test_devices`).

use std::path::Path;

use chex_grpo::corpus::preset_tokenizer;
use chex_grpo::data::{ImageSpec, PreparedImage};
use chex_grpo::model::burn::optim::AdamWConfig;
use chex_grpo::model::burn::tensor::Device;
use chex_grpo::model::burn::tensor::{DType, FloatDType};
use chex_grpo::model::checkpoint::{from_pretrained, save_pretrained};
use chex_grpo::model::device::{DeviceChoice, on_every_test_device, test_devices};
use chex_grpo::model::{Gemma3Config, Gemma3ForConditionalGeneration, ModelDtype};
use chex_grpo::prompts::PromptVariant;
use chex_grpo::rewards::{RewardInit, RewardRegistry, WeightedReward};
use chex_grpo::training::checkpoint::{latest_checkpoint, load_checkpoint};
use chex_grpo::training::log::read_jsonl;
use chex_grpo::training::records::GrpoStepRecord;
use chex_grpo::training::{
    Example, GrpoConfig, Policy, SftConfig, train_grpo, train_grpo_with, train_sft,
};

/// burn's random generator is per process, so tests that draw from it (model initialisation,
/// dropout) run one at a time to keep each one's draws its own.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The miniature architecture: two decoder layers, the tiny preset's vision tower and tokenizer.
fn miniature_config() -> Gemma3Config {
    let mut config = Gemma3Config::preset("tiny").unwrap();
    config.text_config.num_hidden_layers = 2;
    config.text_config.hidden_size = 64;
    config.text_config.intermediate_size = 128;
    config.vision_config.num_hidden_layers = 1;
    config
}

fn with_tokenizer(model: Gemma3ForConditionalGeneration) -> Policy {
    let tokenizer = preset_tokenizer(&model.config).unwrap();
    Policy::new(model, tokenizer, PromptVariant::LabelOnly).unwrap()
}

/// A freshly initialised miniature policy, seeded on `device`.
fn policy(device: &Device) -> Policy {
    device.seed(3);
    with_tokenizer(Gemma3ForConditionalGeneration::new(
        &miniature_config(),
        device,
    ))
}

fn examples() -> Vec<Example> {
    let spec = ImageSpec::siglip(64);
    (0..12)
        .map(|i| {
            let bright = i % 2 == 0;
            let pixels = (0..64 * 64)
                .map(|p| {
                    if bright {
                        0.5
                    } else {
                        -0.5 + (p % 7) as f32 * 0.01
                    }
                })
                .collect();
            Example {
                path: format!("synthetic-{i}.png").into(),
                image: std::sync::Arc::new(PreparedImage {
                    size: spec.size,
                    pixels,
                }),
                labels: vec![if bright {
                    "Cardiomegaly".into()
                } else {
                    "No Finding".into()
                }],
                reasoning: None,
            }
        })
        .collect()
}

fn sft_config(epochs: usize) -> SftConfig {
    SftConfig {
        epochs,
        learning_rate: 3e-3,
        micro_batch: 2,
        effective_batch: 4,
        validation_fraction: 0.25,
        patience: 5,
        lora: None,
        ..SftConfig::chexreason()
    }
}

fn weights(dir: &Path, device: &Device) -> Vec<f32> {
    let p = policy(device);
    let model = p.model.to_device(&device.clone().autodiff());
    let (model, _, _) = load_checkpoint(dir, model, AdamWConfig::new().init()).unwrap();
    q_proj_weights(&model)
}

/// Every decoder layer's query projection, flattened.
fn q_proj_weights(model: &Gemma3ForConditionalGeneration) -> Vec<f32> {
    let mut all = Vec::new();
    for layer in &model.model.language_model.layers {
        let w = layer.self_attn.q_proj.weight.val();
        all.extend(w.into_data().convert::<f32>().try_to_vec::<f32>().unwrap());
    }
    all
}

use chex_grpo::model::burn::module::Module;

#[test]
fn sft_lowers_validation_loss_and_resume_matches_the_uninterrupted_run() {
    let _serial = serial();
    on_every_test_device(|_, device| {
        let data = examples();
        let full = tempfile::tempdir().unwrap();
        let outcome = train_sft(
            policy(device),
            &data,
            &sft_config(3),
            full.path(),
            false,
            device,
        )
        .unwrap();
        let losses = &outcome.validation_losses;
        assert!(losses[2] < losses[0], "validation loss falls: {losses:?}");
        let log: Vec<serde_json::Value> = read_jsonl(&full.path().join("sft_log.jsonl")).unwrap();
        assert!(
            log.iter().any(|r| r.get("eval_loss").is_some())
                && log.iter().any(|r| r.get("grad_norm").is_some())
        );

        // The same three-epoch run stopped after its first epoch, then resumed.
        let split = tempfile::tempdir().unwrap();
        let interrupted = SftConfig {
            stop_after_epochs: Some(1),
            ..sft_config(3)
        };
        train_sft(
            policy(device),
            &data,
            &interrupted,
            split.path(),
            false,
            device,
        )
        .unwrap();
        train_sft(
            policy(device),
            &data,
            &sft_config(3),
            split.path(),
            true,
            device,
        )
        .unwrap();
        let a = weights(&full.path().join("checkpoints/sft-last"), device);
        let b = weights(&split.path().join("checkpoints/sft-last"), device);
        assert_eq!(a.len(), b.len());
        let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differing,
            0,
            "a resumed run ends with the uninterrupted run's weights ({differing} of {} differ)",
            a.len()
        );

        // A truncated checkpoint is refused with the file named; the other one still loads.
        let last = split.path().join("checkpoints/sft-last/model.bpk");
        let bytes = std::fs::read(&last).unwrap();
        std::fs::write(&last, &bytes[..bytes.len() / 3]).unwrap();
        let p = policy(device).model.to_device(&device.clone().autodiff());
        let err = match load_checkpoint(last.parent().unwrap(), p, AdamWConfig::new().init()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a truncated checkpoint loaded"),
        };
        assert!(err.contains("model.bpk"), "{err}");
        assert!(!weights(&split.path().join("checkpoints/sft-best"), device).is_empty());
        assert!(latest_checkpoint(&split.path().join("checkpoints")).is_some());
    });
}

/// LoRA SFT over a bf16 base, on every backend with bf16: the validation loss falls, the policy
/// comes back in bf16, and a run stopped after one epoch and resumed ends with the
/// uninterrupted run's adapters (the checkpoint holds the bf16 base and f32 adapters as they
/// were, so nothing is rounded on the way).
#[test]
fn lora_sft_on_a_bf16_base_learns_and_resumes_exactly() {
    use chex_grpo::model::lora::LoraConfig;
    let _serial = serial();
    on_every_test_device(|choice, device| {
        if !device.supports_dtype(FloatDType::BF16) {
            return;
        }
        let data = examples();
        let bf16_policy = || {
            let mut p = policy(device);
            p.model = p.model.with_dtype(ModelDtype::Bf16);
            p
        };
        let config = |epochs| SftConfig {
            learning_rate: 1e-2,
            lora: Some(LoraConfig {
                dropout: 0.0,
                ..LoraConfig::chexreason()
            }),
            ..sft_config(epochs)
        };
        let full = tempfile::tempdir().unwrap();
        let outcome =
            train_sft(bf16_policy(), &data, &config(3), full.path(), false, device).unwrap();
        let losses = &outcome.validation_losses;
        println!("{choice}: bf16 LoRA SFT validation losses {losses:?}");
        assert!(
            losses.iter().all(|l| l.is_finite()) && losses[2] < losses[0],
            "{losses:?}"
        );
        assert_eq!(outcome.policy.model.dtype(), ModelDtype::Bf16);

        let split = tempfile::tempdir().unwrap();
        let interrupted = SftConfig {
            stop_after_epochs: Some(1),
            ..config(3)
        };
        train_sft(
            bf16_policy(),
            &data,
            &interrupted,
            split.path(),
            false,
            device,
        )
        .unwrap();
        train_sft(bf16_policy(), &data, &config(3), split.path(), true, device).unwrap();
        let adapters = |dir: &Path| {
            std::fs::read(dir.join("checkpoints/sft-last/adapter/adapter_model.safetensors"))
                .unwrap()
        };
        assert!(
            adapters(full.path()) == adapters(split.path()),
            "{choice}: the resumed run's adapters differ from the uninterrupted run's"
        );

        // The frozen base is written once per stage, to `frozen.bpk`, and linked into every
        // later checkpoint; `model.bpk` holds only what trains.
        let checkpoints = full.path().join("checkpoints");
        let file = |name: &str| std::fs::metadata(checkpoints.join(name)).unwrap();
        let frozen = file("sft-last/frozen.bpk");
        assert!(
            file("sft-last/model.bpk").len() * 4 < frozen.len(),
            "{choice}: model.bpk {} bytes, frozen.bpk {}",
            file("sft-last/model.bpk").len(),
            frozen.len()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(
                frozen.ino(),
                file("sft-best/frozen.bpk").ino(),
                "{choice}: the best and last checkpoints share one frozen file"
            );
        }
        // A damaged frozen file is refused by name, like any other.
        let damaged = tempfile::tempdir().unwrap();
        copy_tree(full.path(), damaged.path());
        let target = damaged.path().join("checkpoints/sft-last/frozen.bpk");
        let mut bytes = std::fs::read(&target).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        std::fs::write(&target, bytes).unwrap();
        let err = train_sft(
            bf16_policy(),
            &data,
            &config(3),
            damaged.path(),
            true,
            device,
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("frozen.bpk") && err.contains("checksum"),
            "{err}"
        );
    });
}

fn grpo_config(steps: usize) -> GrpoConfig {
    GrpoConfig {
        steps,
        prompts_per_step: 2,
        max_completion_length: 12,
        eval_every: 2,
        ..GrpoConfig::chexreason()
    }
}

#[test]
fn grpo_logs_trl_metrics_every_step() {
    let _serial = serial();
    on_every_test_device(|_, device| {
        let data = examples();
        let out = tempfile::tempdir().unwrap();
        let config = grpo_config(2);
        let outcome = train_grpo(
            policy(device),
            &data[..8],
            &data[8..],
            &config,
            out.path(),
            false,
            device,
        )
        .unwrap();
        assert_eq!(outcome.rewards.len(), 2);
        let log: Vec<serde_json::Value> = read_jsonl(&out.path().join("grpo_log.jsonl")).unwrap();
        assert_eq!(log.len(), 2);
        for key in [
            "reward",
            "reward_std",
            "rewards/hard/mean",
            "rewards/hard/std",
            "frac_reward_zero_std",
            "kl",
            "entropy",
            "clip_ratio/low_mean",
            "clip_ratio/high_mean",
            "clip_ratio/region_mean",
            "completions/mean_length",
            "completions/clipped_ratio",
            "learning_rate",
            "grad_norm",
            "step_time",
        ] {
            assert!(log[1].get(key).is_some(), "missing {key} in {}", log[1]);
        }
        assert!(log[1].get("eval_macro_f1").is_some());
        // The typed record reads what was written.
        let typed: Vec<GrpoStepRecord> = read_jsonl(&out.path().join("grpo_log.jsonl")).unwrap();
        assert!(typed[1].eval_macro_f1.is_some() && typed[0].reward_mean("hard").is_some());
        // LoRA's B matrices start at zero, so the first policy is the reference exactly.
        let kl = typed[0].kl.unwrap();
        assert!(
            kl.abs() < 1e-6,
            "step-1 kl {kl} (must be 0: adapters start at zero)"
        );
        // TRL's default schedule: linear decay from the peak over the updates.
        assert_eq!(typed[0].learning_rate, config.learning_rate);
        assert_eq!(typed[1].learning_rate, config.learning_rate / 2.0);
        assert!(
            out.path()
                .join("checkpoints/grpo-last/adapter/adapter_model.safetensors")
                .exists()
        );
    });
}

/// `dapo` normalises by the batch's completion tokens (`num_items_in_batch`); it used to
/// fail at step 1 because the trainer never passed them. Two weighted rewards are logged
/// under their configured names, as TRL logs its reward functions.
#[test]
fn dapo_runs_with_weighted_named_rewards_and_no_kl_at_beta_zero() {
    let _serial = serial();
    on_every_test_device(|_, device| {
        let data = examples();
        let out = tempfile::tempdir().unwrap();
        let mut config = grpo_config(1);
        config.loss.loss_type = chex_grpo::objective::LossType::Dapo;
        config.loss.beta = 0.0;
        config.mu = 2;
        config.mask_truncated_completions = true;
        config.rewards = vec![
            WeightedReward::new("format", 0.5),
            WeightedReward::new("f1", 1.0),
        ];
        train_grpo(
            policy(device),
            &data[..8],
            &[],
            &config,
            out.path(),
            false,
            device,
        )
        .unwrap();
        let log: Vec<GrpoStepRecord> = read_jsonl(&out.path().join("grpo_log.jsonl")).unwrap();
        assert!(log[0].loss.is_some_and(f64::is_finite), "{:?}", log[0]);
        assert!(log[0].kl.is_none(), "β = 0 computes no KL: {:?}", log[0]);
        for name in ["format", "f1"] {
            assert!(
                log[0].reward_mean(name).is_some(),
                "rewards/{name}/mean missing"
            );
        }
    });
}

/// A reward registered by a downstream crate is trained on without touching the trainer.
#[test]
fn a_registered_reward_plugs_into_grpo() {
    struct Brevity;
    impl chex_grpo::rewards::Reward for Brevity {
        fn name(&self) -> &str {
            "brevity"
        }
        fn score(&mut self, input: &chex_grpo::rewards::Prepared) -> f64 {
            -(input.token_count as f64) / 12.0
        }
    }
    let _serial = serial();
    let device = DeviceChoice::Cpu.device().unwrap();
    let data = examples();
    let out = tempfile::tempdir().unwrap();
    let mut config = grpo_config(1);
    config.rewards = vec![WeightedReward::new("brevity", 1.0)];
    let refused = train_grpo(
        policy(&device),
        &data[..8],
        &[],
        &config,
        out.path(),
        false,
        &device,
    );
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("unknown reward `brevity`")),
        "an unregistered reward must be refused"
    );
    let mut registry = RewardRegistry::builtin();
    registry.register("brevity", |_: &RewardInit| Box::new(Brevity));
    train_grpo_with(
        policy(&device),
        &data[..8],
        &[],
        &config,
        &registry,
        out.path(),
        false,
        &device,
    )
    .unwrap();
    let log: Vec<GrpoStepRecord> = read_jsonl(&out.path().join("grpo_log.jsonl")).unwrap();
    let mean = log[0].reward_mean("brevity").unwrap();
    assert!((-1.0..0.0).contains(&mean), "{mean}");
}

/// GRPO resumed from its checkpoint ends with the uninterrupted run's adapters, bit for bit.
#[test]
fn grpo_resume_matches_the_uninterrupted_run() {
    let _serial = serial();
    let device = DeviceChoice::Cpu.device().unwrap();
    let data = examples();
    let mut config = grpo_config(4);
    config.mu = 2;
    let full = tempfile::tempdir().unwrap();
    let run = |config: &GrpoConfig, out: &Path, resume: bool| {
        train_grpo(
            policy(&device),
            &data[..8],
            &data[8..],
            config,
            out,
            resume,
            &device,
        )
        .unwrap()
    };
    run(&config, full.path(), false);
    let split = tempfile::tempdir().unwrap();
    // Stop after step 3 (between validations), then resume to 4.
    let first_part = GrpoConfig {
        stop_after_steps: Some(3),
        ..config.clone()
    };
    run(&first_part, split.path(), false);
    run(&config, split.path(), true);
    let adapter = |dir: &Path| {
        std::fs::read(dir.join("checkpoints/grpo-last/adapter/adapter_model.safetensors")).unwrap()
    };
    assert_eq!(adapter(full.path()), adapter(split.path()));
}

#[test]
fn a_non_finite_loss_skips_the_step_and_changes_nothing() {
    let _serial = serial();
    on_every_test_device(|_, device| {
        let mut data = examples();
        for e in data.iter_mut() {
            let pixels = vec![f32::NAN; 64 * 64];
            e.image = std::sync::Arc::new(PreparedImage { size: 64, pixels });
        }
        let out = tempfile::tempdir().unwrap();
        let start = policy(device);
        let before = q_proj_weights(&start.model);
        let config = SftConfig {
            freeze_vision: false,
            ..sft_config(1)
        };
        let outcome = train_sft(start, &data, &config, out.path(), false, device).unwrap();
        assert!(outcome.skipped_steps > 0);
        let log: Vec<serde_json::Value> = read_jsonl(&out.path().join("sft_log.jsonl")).unwrap();
        assert!(
            log.iter()
                .filter(|r| r.get("grad_norm").is_some())
                .all(|r| r["skipped"] == true)
        );
        let after = q_proj_weights(&outcome.policy.model);
        assert_eq!(before, after, "no update was applied");
    });
}

#[test]
fn sft_jsonl_errors_name_the_line() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("x.png");
    image::GrayImage::from_pixel(8, 8, image::Luma([128u8]))
        .save(&image)
        .unwrap();
    let file = dir.path().join("sft.jsonl");
    std::fs::write(
        &file,
        "{\"image\": \"x.png\", \"labels\": [\"effusion\"], \"reasoning\": \"Blunted angle.\"}\n{\"image\": \"x.png\", \"labels\": [\"Heart Attack\"]}\n",
    )
    .unwrap();
    let cache = chex_grpo::data::ImageCache::new(ImageSpec::siglip(64));
    let err = chex_grpo::training::examples::read_sft_jsonl(&file, &cache, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sft.jsonl:2") && err.contains("Heart Attack"),
        "{err}"
    );
    std::fs::write(
        &file,
        "{\"image\": \"x.png\", \"labels\": [\"effusion\"], \"reasoning\": \"Blunted angle.\"}\n",
    )
    .unwrap();
    let ok = chex_grpo::training::examples::read_sft_jsonl(&file, &cache, false).unwrap();
    assert_eq!(ok[0].labels, vec!["Pleural Effusion".to_string()]);
    assert_eq!(
        ok[0].reasoning.as_deref(),
        Some("<think>Blunted angle.</think><solution>Pleural Effusion</solution>")
    );
}

/// A miniature model initialised once on flex and saved, then imported on `device`: seeds draw
/// differently per backend, imported weights are the same everywhere.
fn imported_policy(dir: &Path, device: &Device) -> Policy {
    if !dir.join("model.safetensors").exists() {
        let flex = DeviceChoice::Cpu.device().unwrap();
        flex.seed(3);
        let model = Gemma3ForConditionalGeneration::new(&miniature_config(), &flex);
        save_pretrained(&model, dir).unwrap();
    }
    with_tokenizer(from_pretrained(dir, device).unwrap())
}

#[test]
fn sft_validation_loss_agrees_across_backends_on_the_same_imported_weights() {
    let _serial = serial();
    let weights = tempfile::tempdir().unwrap();
    let data = examples();
    // Full fine-tuning without dropout: nothing random happens on the device, so every backend
    // computes the same function of the same numbers.
    let config = |learning_rate: f64, epochs: usize| SftConfig {
        learning_rate,
        ..sft_config(epochs)
    };
    let mut untrained = Vec::new();
    let mut trained = Vec::new();
    for (choice, device) in test_devices().unwrap() {
        let run = |config: &SftConfig| {
            let out = tempfile::tempdir().unwrap();
            let policy = imported_policy(weights.path(), &device);
            let outcome = train_sft(policy, &data, config, out.path(), false, &device).unwrap();
            outcome.validation_losses
        };
        // A learning rate of 0 leaves the weights alone: the validation loss is the imported
        // model's own, computed by the inference (non-autodiff) path.
        untrained.push((choice, run(&config(0.0, 1))[0]));
        trained.push((choice, run(&config(3e-3, 2))));
    }
    println!("untrained validation loss per backend: {untrained:?}");
    println!("trained validation losses per backend: {trained:?}");
    let (reference, loss) = untrained[0];
    for &(choice, other) in &untrained[1..] {
        // Same weights, same inputs: only the order of f32 summation differs between backends.
        // Measured: 3e-8 relative (flex, ndarray and tch-cpu on this loss of 7.58), a fraction
        // of one f32 ulp per reduction. 1e-5 allows a hundred times that and still catches any
        // real difference: the inverted attention mask moved flex vs tch-cpu validation loss
        // by 16% (4.36 vs 5.06) on the NIH sample.
        let relative = (other - loss).abs() / loss.abs();
        assert!(
            relative < 1e-5,
            "untrained validation loss: {reference} {loss} vs {choice} {other} ({relative:e} relative)"
        );
    }
    let (reference, losses) = &trained[0];
    for (choice, other) in &trained[1..] {
        for (epoch, (a, b)) in losses.iter().zip(other).enumerate() {
            // Six AdamW steps can amplify rounding (Adam divides a gradient by its own running
            // scale, so noise-sized gradients still move weights by about the learning rate).
            // Measured: at most 7e-8 relative after each epoch on every backend; the bound is
            // the untrained one, 1e-5.
            let relative = (a - b).abs() / a.abs();
            assert!(
                relative < 1e-5,
                "epoch {} validation loss: {reference} {a} vs {choice} {b} ({relative:e} relative)",
                epoch + 1
            );
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Resuming never loses work silently: a damaged or incomplete last checkpoint is an error
/// naming the file (and the best checkpoint survives), a save interrupted between its two
/// renames is recovered, and a torn last log line is cut off.
#[test]
fn resume_refuses_damage_and_recovers_an_interrupted_save() {
    let _serial = serial();
    let device = DeviceChoice::Cpu.device().unwrap();
    let data = examples();
    let config = sft_config(2);
    let run = |out: &Path, config: &SftConfig, resume: bool| {
        train_sft(policy(&device), &data, config, out, resume, &device)
    };
    let uninterrupted = tempfile::tempdir().unwrap();
    run(uninterrupted.path(), &config, false).unwrap();
    let first_epoch = tempfile::tempdir().unwrap();
    let stop = SftConfig {
        stop_after_epochs: Some(1),
        ..config.clone()
    };
    run(first_epoch.path(), &stop, false).unwrap();
    let variant = |damage: &dyn Fn(&Path)| {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(first_epoch.path(), dir.path());
        damage(&dir.path().join("checkpoints"));
        let outcome = run(dir.path(), &config, true).map(|_| ());
        (dir, outcome)
    };
    let refused = |outcome: Result<(), chex_grpo::Error>, needles: &[&str]| {
        let e = outcome.unwrap_err().to_string();
        assert!(needles.iter().all(|n| e.contains(n)), "{e}");
    };

    // A flipped byte in the weights.
    let (dir, outcome) = variant(&|c| {
        let file = c.join("sft-last/model.bpk");
        let mut bytes = std::fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        std::fs::write(&file, bytes).unwrap();
    });
    refused(outcome, &["model.bpk", "checksum"]);
    assert!(dir.path().join("checkpoints/sft-best/state.json").exists());

    // No state.json in the last checkpoint.
    let (dir, outcome) = variant(&|c| std::fs::remove_file(c.join("sft-last/state.json")).unwrap());
    refused(outcome, &["sft-last", "state.json"]);
    assert!(dir.path().join("checkpoints/sft-best/state.json").exists());

    // A best checkpoint but no last one: resuming must not start afresh over it.
    let (dir, outcome) = variant(&|c| std::fs::remove_dir_all(c.join("sft-last")).unwrap());
    refused(outcome, &["sft-best", "sft-last"]);
    assert!(dir.path().join("checkpoints/sft-best/state.json").exists());

    // Killed between the save's two renames (the last checkpoint moved aside, the new one not
    // yet in place), and in the middle of a log line: the resumed run is the uninterrupted one.
    let (dir, outcome) = variant(&|c| {
        std::fs::rename(c.join("sft-last"), c.join(".sft-last.old")).unwrap();
        let log = c.parent().unwrap().join("sft_log.jsonl");
        let mut text = std::fs::read_to_string(&log).unwrap();
        text.push_str("{\"step\": 99, \"lo");
        std::fs::write(&log, text).unwrap();
    });
    outcome.unwrap();
    let a = weights(&uninterrupted.path().join("checkpoints/sft-last"), &device);
    let b = weights(&dir.path().join("checkpoints/sft-last"), &device);
    assert_eq!(
        a, b,
        "the recovered run ends with the uninterrupted run's weights"
    );
    let log: Vec<chex_grpo::training::records::SftLogRecord> =
        read_jsonl(&dir.path().join("sft_log.jsonl")).unwrap();
    let full: Vec<chex_grpo::training::records::SftLogRecord> =
        read_jsonl(&uninterrupted.path().join("sft_log.jsonl")).unwrap();
    assert_eq!(log.len(), full.len());
}

/// The model GRPO and SFT train gets gradients exactly where it should — every adapter (LoRA),
/// or every weight but the frozen vision tower's (full fine-tuning) — with burn's gradient
/// checkpointing on and off.
#[test]
fn only_the_trained_weights_get_gradients_with_and_without_checkpointing() {
    use chex_grpo::model::burn::store::ModuleSnapshot;
    use chex_grpo::model::burn::tensor::{Tensor, TensorData};
    use chex_grpo::model::checkpointing::score_for_training;
    use chex_grpo::model::lora::LoraConfig;
    use chex_grpo::model::scoring::ScoringRow;
    use chex_grpo::model::vlm::ImageInputs;
    use chex_grpo::training::grpo::training_model;
    let _serial = serial();
    on_every_test_device(|choice, device| {
        let mut dtypes = vec![ModelDtype::F32];
        if device.supports_dtype(FloatDType::BF16) {
            dtypes.push(ModelDtype::Bf16);
        }
        for (dtype, checkpointing) in dtypes.iter().flat_map(|d| [(*d, false), (*d, true)]) {
            for lora in [Some(LoraConfig::chexreason()), None] {
                let adapters = lora.is_some();
                let config = GrpoConfig {
                    lora,
                    gradient_checkpointing: Some(checkpointing),
                    ..GrpoConfig::chexreason()
                };
                let policy = policy(device);
                let model = training_model(policy.model.clone().with_dtype(dtype), &config, device);
                // What is trained is f32 (adapters, or full weights as masters); what is frozen
                // keeps the model's dtype, norms and biases f32 throughout.
                for tensor in model.collect(None, None, false) {
                    let product = tensor.name.ends_with("proj.weight")
                        || tensor.name.ends_with("fc1.weight")
                        || tensor.name.ends_with("fc2.weight")
                        || tensor.name.ends_with("embed_tokens.weight")
                        || tensor.name.ends_with("mm_input_projection_weight");
                    let trained = if adapters {
                        tensor.name.contains(".lora.")
                    } else {
                        !tensor.name.contains("vision_tower")
                    };
                    let want = if product && !trained && dtype == ModelDtype::Bf16 {
                        DType::BF16
                    } else {
                        DType::F32
                    };
                    assert_eq!(
                        tensor.dtype, want,
                        "{choice} {dtype} adapters {adapters}: {}",
                        tensor.name
                    );
                }
                let ad = model.devices().remove(0);
                let side = model.config.vision_config.image_size;
                let pixels = Tensor::<4>::from_data(
                    TensorData::new(vec![0.1f32; 3 * side * side], [1, 3, side, side]),
                    &ad,
                );
                let features = model.encode_images(pixels).unwrap();
                let rows = [ScoringRow {
                    prompt: &policy.prompt.ids,
                    image_block: policy.prompt.image_block.as_ref(),
                    completion: &[5, 9, 14],
                }];
                let (scores, graph) = score_for_training(
                    &model,
                    &rows,
                    Some(ImageInputs {
                        features: &features,
                        image_of_row: &[0],
                    }),
                    1.0,
                    checkpointing,
                    &ad,
                );
                let grads = graph.gradients(scores.logprobs.sum(), &model);
                let names: Vec<String> = model
                    .collect(None, None, false)
                    .into_iter()
                    .map(|t| t.name)
                    .collect();
                let expected = names
                    .iter()
                    .filter(|n| {
                        if adapters {
                            n.contains(".lora.")
                        } else {
                            !n.contains("vision_tower")
                        }
                    })
                    .count();
                assert!(expected > 0);
                assert_eq!(
                    grads.len(),
                    expected,
                    "{choice} {dtype}, checkpointing {checkpointing}, adapters {adapters}"
                );
            }
        }
    });
}
