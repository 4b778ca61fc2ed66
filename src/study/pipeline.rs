//! The stages of a study and the whole run: optionally pretrain on a third site, evaluate the
//! base model, SFT, evaluate, GRPO from the SFT checkpoint, evaluate, report. Each stage writes into the one output folder, so
//! the stages can also be run one at a time (`chex sft`, `chex grpo`, `chex eval`, `chex report`)
//! and an interrupted run resumes where it stopped.

use std::path::Path;
use std::time::Instant;

use chex_model::burn::tensor::Device;
use chex_model::checkpoint::from_pretrained_in;
use chex_model::lora::{apply_lora, merge_lora};
use chex_model::{
    ChexTokenizer, DeviceChoice, Gemma3Config, Gemma3ForConditionalGeneration, MemoryEstimate,
    select_device,
};
use serde_json::json;

use super::config::StudyConfig;
use super::data::{StudyData, prepare_data};
use super::evaluate::{CHECKPOINTS, evaluate_checkpoint, metrics_path, print_scores};
use super::report::{Report, write_report};
use crate::corpus::preset_tokenizer;
use crate::error::{Error, Result, to_json};
use crate::prompts::{PromptVariant, reference_answer};
use crate::training::checkpoint::load_checkpoint_model;
use crate::training::tensorboard::LiveMirrors;
use crate::training::{Policy, train_grpo_with, train_sft, train_supervised};
use chex_rewards::RewardRegistry;
use rand::SeedableRng;

/// The device a configuration names, seeded with the study's seed; a model and batch sizes that
/// cannot fit it are refused here, before any data is read or model built (every stage starts
/// by choosing its device).
pub fn study_device(config: &StudyConfig) -> Result<Device> {
    ensure_fits(config)?;
    let device = select_device(&config.device)?;
    config.model_dtype()?.ensure_supported(&device)?;
    device.seed(config.seed);
    Ok(device)
}

/// The model configuration the study trains.
pub fn model_config(config: &StudyConfig) -> Result<Gemma3Config> {
    Ok(match (&config.model.pretrained, &config.model.preset) {
        (Some(dir), _) => Gemma3Config::from_file(&dir.join("config.json"))?,
        (None, Some(preset)) => Gemma3Config::preset(preset)?,
        (None, None) => {
            return Err(Error::setting("model", "give `preset` or `pretrained`"));
        }
    })
}

/// The memory the study will hold at its largest, from the model's dimensions and the batch
/// sizes and lengths the configuration asks for.
pub fn memory_estimate(config: &StudyConfig) -> Result<MemoryEstimate> {
    let model = model_config(config)?;
    let trained = if config.sft.lora.is_none() {
        chex_model::memory::parameters(&model)
    } else {
        0.0
    };
    // The prompt's text is a few dozen tokens; 128 is a generous bound.
    let prompt = model.mm_tokens_per_image + 128;
    let grpo_rows = config.grpo.prompts_per_step * config.grpo.group_size;
    let rows = config.eval.batch.max(grpo_rows).max(config.sft.micro_batch);
    let tokens = prompt
        + config
            .eval
            .max_new_tokens
            .max(config.grpo.max_completion_length);
    Ok(MemoryEstimate::new(
        &model,
        config.model_dtype()?,
        trained,
        rows,
        tokens,
    ))
}

/// Refuses a model and batch sizes that cannot fit the machine, with the estimate, before
/// any data is loaded or model built.
pub fn ensure_fits(config: &StudyConfig) -> Result<()> {
    let choice: DeviceChoice = config.device.parse()?;
    let model = match (&config.model.pretrained, &config.model.preset) {
        (Some(dir), _) => dir.join("config.json").display().to_string(),
        (None, preset) => format!("preset `{}`", preset.as_deref().unwrap_or_default()),
    };
    let what = format!(
        "the model of {model} at this study's batch sizes and lengths (eval.batch, \
         grpo.prompts_per_step × grpo.group_size, eval.max_new_tokens)"
    );
    memory_estimate(config)?.ensure_fits(choice, &what)?;
    Ok(())
}

/// The untrained policy: the pretrained checkpoint, or the preset initialised with the seed
/// (before the `pretrain` stage, when that is on).
pub fn initial_policy(config: &StudyConfig, device: &Device) -> Result<Policy> {
    let dtype = config.model_dtype()?;
    let (model, tokenizer) = match &config.model.pretrained {
        Some(dir) => (
            from_pretrained_in(dir, dtype, device)?,
            ChexTokenizer::from_file(&dir.join("tokenizer.json"))?,
        ),
        None => {
            let model_config = model_config(config)?;
            let model = Gemma3ForConditionalGeneration::seeded_in(
                &model_config,
                config.seed,
                dtype,
                device,
            );
            let tokenizer = preset_tokenizer(&model_config)?;
            (model, tokenizer)
        }
    };
    Policy::new(model, tokenizer, config.model.prompt)
}

fn finished(dir: &Path, names: [&str; 2]) -> Result<std::path::PathBuf> {
    for name in names {
        crate::training::checkpoint::recover_checkpoint(dir, name)?;
    }
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.join("state.json").exists())
        .ok_or_else(|| Error::MissingCheckpoint {
            names: names.iter().map(|n| n.to_string()).collect(),
            dir: dir.to_path_buf(),
        })
}

/// A supervised stage's model as the next stage starts from it: its adapters, if it used
/// them, merged into the weights.
fn merged(
    model: Gemma3ForConditionalGeneration,
    with_adapters: bool,
    device: &Device,
) -> Gemma3ForConditionalGeneration {
    if with_adapters {
        merge_lora(model, device)
    } else {
        model
    }
}

/// The SFT policy as GRPO starts from it.
fn after_sft(
    model: Gemma3ForConditionalGeneration,
    config: &StudyConfig,
    device: &Device,
) -> Gemma3ForConditionalGeneration {
    merged(model, config.sft.lora.is_some(), device)
}

/// The base policy: the initial one, after the `pretrain` stage's best checkpoint when that
/// stage is on.
pub fn base_policy(config: &StudyConfig, device: &Device) -> Result<Policy> {
    let mut policy = initial_policy(config, device)?;
    if config.pretrains() {
        let checkpoints = config.out.join("checkpoints");
        let dir = finished(&checkpoints, ["pretrain-best", "pretrain-last"])?;
        let mut model = policy.model.clone();
        if let Some(lora) = &config.pretrain.training.lora {
            model = apply_lora(model, lora, config.seed, device);
        }
        model = load_checkpoint_model(&dir, model)?;
        policy.model = merged(model, config.pretrain.training.lora.is_some(), device);
    }
    Ok(policy)
}

/// Label-only answers on the pretraining site, from the initial policy. The question is the
/// study's own prompt (what the base is asked when it is scored); the answer leaves the
/// reasoning block empty, as a pretrained model that names findings without explaining them.
pub fn pretrain_stage(
    policy: Policy,
    data: &StudyData,
    config: &StudyConfig,
    resume: bool,
    device: &Device,
) -> Result<Policy> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.pretrain.training.seed);
    let examples: Vec<crate::training::Example> = data
        .pretrain
        .iter()
        .map(|e| {
            let labels: Vec<&str> = e
                .labels
                .iter()
                .map(String::as_str)
                .filter(|l| *l != "No Finding")
                .collect();
            let answer = reference_answer(&labels, PromptVariant::LabelOnly, &mut rng);
            crate::training::Example {
                reasoning: Some(answer),
                ..e.clone()
            }
        })
        .collect();
    let training = &config.pretrain.training;
    let mut outcome = train_supervised(
        "pretrain",
        policy,
        &examples,
        training,
        &config.out,
        resume,
        device,
    )?;
    outcome.policy.model = merged(outcome.policy.model, training.lora.is_some(), device);
    Ok(outcome.policy)
}

/// A stage's policy read back from the output folder: `base`, `sft` (best, else last) or `grpo`
/// (best, else last).
pub fn load_policy(config: &StudyConfig, stage: &str, device: &Device) -> Result<Policy> {
    let mut policy = base_policy(config, device)?;
    if stage == "base" {
        return Ok(policy);
    }
    let checkpoints = config.out.join("checkpoints");
    let mut model = policy.model.clone();
    if let Some(lora) = &config.sft.lora {
        // The checkpoint's adapters replace these right away; the seed only shapes them.
        model = apply_lora(model, lora, config.seed, device);
    }
    model = load_checkpoint_model(&finished(&checkpoints, ["sft-best", "sft-last"])?, model)?;
    model = after_sft(model, config, device);
    match stage {
        "sft" => {}
        "grpo" => {
            if let Some(lora) = &config.grpo.lora {
                model = apply_lora(model, lora, config.seed, device);
            }
            model =
                load_checkpoint_model(&finished(&checkpoints, ["grpo-best", "grpo-last"])?, model)?;
        }
        other => return Err(Error::UnknownCheckpoint(other.to_string())),
    }
    policy.model = model;
    Ok(policy)
}

/// Save the resolved configuration as `out/config.toml` (what the report and later stages read).
pub fn save_config(config: &StudyConfig) -> Result<()> {
    let path = config.out.join("config.toml");
    chex_data::write_atomic(&path, config.to_toml()?.as_bytes()).map_err(|e| Error::io(&path, e))
}

/// Load the data a configuration names, printing what was loaded and writing `draws.json`.
pub fn load_data(config: &StudyConfig) -> Result<StudyData> {
    let image_size = model_config(config)?.vision_config.image_size as u32;
    let data = prepare_data(config, image_size)?;
    for line in &data.summary {
        println!("{line}");
    }
    let paths = |e: &[crate::training::Example]| -> Vec<String> {
        e.iter().map(|x| x.path.display().to_string()).collect()
    };
    let shortfalls: Vec<_> = data.draws.iter().map(|d| &d.shortfalls).collect();
    let draws = json!({
        "sft": paths(&data.sft), "rl": paths(&data.rl), "validation": paths(&data.validation),
        "shortfalls": shortfalls, "loaded": data.summary,
    });
    let path = config.out.join("draws.json");
    let text = to_json(&draws, &path, true)?;
    chex_data::write_atomic(&path, text.as_bytes()).map_err(|e| Error::io(&path, e))?;
    Ok(data)
}

/// What every stage starts from: the seeded device, the resolved configuration saved in the
/// output folder, and the data.
pub fn open_study(config: &StudyConfig) -> Result<(Device, StudyData)> {
    let device = study_device(config)?;
    save_config(config)?;
    Ok((device, load_data(config)?))
}

/// SFT from `policy` on the SFT draw; returns the best policy, adapters merged.
pub fn sft_stage(
    policy: Policy,
    data: &StudyData,
    config: &StudyConfig,
    resume: bool,
    device: &Device,
) -> Result<Policy> {
    let mut outcome = train_sft(policy, &data.sft, &config.sft, &config.out, resume, device)?;
    outcome.policy.model = after_sft(outcome.policy.model, config, device);
    Ok(outcome.policy)
}

/// GRPO from the SFT policy on the RL draw, validated on the validation draw, with the rewards
/// of `registry`.
pub fn grpo_stage(
    policy: Policy,
    data: &StudyData,
    config: &StudyConfig,
    registry: &RewardRegistry,
    resume: bool,
    device: &Device,
) -> Result<Policy> {
    Ok(train_grpo_with(
        policy,
        &data.rl,
        &data.validation,
        &config.grpo,
        registry,
        &config.out,
        resume,
        device,
    )?
    .policy)
}

/// Whether every test set of `checkpoint` already has metrics (so a resumed run skips it).
pub fn evaluated(config: &StudyConfig, checkpoint: &str) -> bool {
    config
        .data
        .tests
        .iter()
        .all(|t| metrics_path(&config.out, checkpoint, &t.name).exists())
}

/// Wall time per stage in `timings.json`. While a stage runs, a heartbeat rewrites its time
/// every few seconds, so an invocation that is killed still leaves its time there, and the
/// resumed invocation adds to it: the file adds up across interrupted runs (losing at most
/// one heartbeat per kill).
struct Timings {
    state: std::sync::Arc<std::sync::Mutex<TimingsState>>,
    heartbeat: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

struct TimingsState {
    path: std::path::PathBuf,
    stages: Vec<(String, f64)>,
    /// The stage running now: its name, the seconds earlier invocations spent on it, and
    /// when this invocation started it.
    running: Option<(String, f64, Instant)>,
}

impl TimingsState {
    fn write(&mut self) -> Result<()> {
        if let Some((stage, earlier, started)) = &self.running {
            let seconds = earlier + started.elapsed().as_secs_f64();
            match self.stages.iter_mut().find(|(s, _)| s == stage) {
                Some(entry) => entry.1 = seconds,
                None => self.stages.push((stage.clone(), seconds)),
            }
        }
        let text = to_json(&self.stages, &self.path, false)?;
        chex_data::write_atomic(&self.path, text.as_bytes()).map_err(|e| Error::io(&self.path, e))
    }
}

const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

impl Timings {
    /// Start from the times in `out` when resuming, else from none.
    fn open(out: &Path, resume: bool) -> Self {
        let path = out.join("timings.json");
        let stages = std::fs::read_to_string(&path)
            .ok()
            .filter(|_| resume)
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let state = std::sync::Arc::new(std::sync::Mutex::new(TimingsState {
            path,
            stages,
            running: None,
        }));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let beating = state.clone();
        let thread = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(HEARTBEAT)
            {
                if let Ok(mut state) = beating.lock()
                    && state.running.is_some()
                {
                    // A failed heartbeat is retried at the next beat; `finish` reports errors.
                    let _ = state.write();
                }
            }
        });
        Self {
            state,
            heartbeat: Some((stop, thread)),
        }
    }

    /// Start timing `stage`; a resumed stage adds to what earlier invocations spent on it.
    fn start(&self, stage: &str, resumed: bool) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let earlier = if resumed {
            state
                .stages
                .iter()
                .find(|(s, _)| s == stage)
                .map_or(0.0, |(_, t)| *t)
        } else {
            state.stages.retain(|(s, _)| s != stage);
            0.0
        };
        state.running = Some((stage.to_string(), earlier, Instant::now()));
    }

    /// Stop timing the running stage and write its total.
    fn finish(&self) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.write()?;
        if let Some((stage, _, _)) = state.running.take()
            && let Some((_, seconds)) = state.stages.iter().find(|(s, _)| *s == stage)
        {
            println!("{stage}: {seconds:.0} s");
        }
        Ok(())
    }
}

impl Drop for Timings {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.heartbeat.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

/// The training logs' TensorBoard mirrors, when `logging.tensorboard` is on; every command
/// that trains holds them while it runs.
pub fn tensorboard_mirrors(config: &StudyConfig) -> Option<LiveMirrors> {
    config
        .logging
        .tensorboard
        .then(|| LiveMirrors::start(&config.out, &["pretrain", "sft", "grpo"]))
}

/// The whole study with the built-in rewards; with `resume`, finished stages are read back
/// instead of rerun.
pub fn run_study(config: &StudyConfig, resume: bool) -> Result<Report> {
    run_study_with(config, &RewardRegistry::builtin(), resume)
}

/// [`run_study`] with the rewards of `registry` (the built-ins plus a downstream crate's own,
/// which `[[grpo.rewards]]` may then name).
pub fn run_study_with(
    config: &StudyConfig,
    registry: &RewardRegistry,
    resume: bool,
) -> Result<Report> {
    config.validate_with(registry)?;
    std::fs::create_dir_all(&config.out).map_err(|e| Error::io(&config.out, e))?;
    let timings = Timings::open(&config.out, resume);
    let mirrors = tensorboard_mirrors(config);
    timings.start("data", resume);
    let (device, data) = open_study(config)?;
    timings.finish()?;

    let mut policy = initial_policy(config, &device)?;
    if config.pretrains() {
        timings.start("pretrain", resume);
        policy = pretrain_stage(policy, &data, config, resume, &device)?;
        timings.finish()?;
    }
    for (checkpoint, _) in CHECKPOINTS {
        if checkpoint != "base" {
            timings.start(checkpoint, resume);
        }
        match checkpoint {
            "base" => {}
            "sft" => policy = sft_stage(policy, &data, config, resume, &device)?,
            _ => policy = grpo_stage(policy, &data, config, registry, resume, &device)?,
        }
        if checkpoint != "base" {
            timings.finish()?;
        }
        if !(resume && evaluated(config, checkpoint)) {
            timings.start(&format!("evaluate {checkpoint}"), resume);
            let scores = evaluate_checkpoint(&policy, checkpoint, &data.tests, config, &device)?;
            print_scores(checkpoint, &data.tests, &scores);
            timings.finish()?;
        }
    }
    if let Some(mirrors) = mirrors {
        mirrors.finish()?;
    }
    write_report(&config.out)
}
