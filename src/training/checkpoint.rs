//! Training checkpoints: the model with its parameter ids (burnpack), the optimizer state,
//! the run's position (`state.json`), and the adapters in PEFT's layout for use elsewhere.
//!
//! A model under training keeps the parameters it trains in `model.bpk` and those it never
//! changes (a LoRA run's base, a frozen vision tower) in `frozen.bpk`. A stage writes the frozen
//! file once and links it into every later checkpoint ([`FrozenWeights`]): at MedGemma-4B with
//! LoRA that is 8.6 GB of bf16 weights not written and hashed again at every save. Each
//! checkpoint folder still holds everything it needs.
//!
//! A checkpoint is written into a hidden temporary folder (`.{name}.partial`), flushed to the
//! disk, and renamed into place; the previous one is moved aside (`.{name}.old`) first and
//! removed after. `state.json` is written last and records a SHA-256 of every other file, which
//! loading verifies. A crash at any instant leaves either the old checkpoint, the new one, or
//! both beside the name, and [`recover_checkpoint`] puts the newest complete one back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chex_model::Gemma3ForConditionalGeneration;
use chex_model::burn::module::{Module, ModuleVisitor, Param};
use chex_model::burn::optim::ModuleOptimizer;
use chex_model::burn::store::{BurnpackStore, ModuleSnapshot, PathFilter};
use chex_model::burn::tensor::Tensor;
use chex_model::lora::{LoraConfig, save_adapter};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// `sft` or `grpo`.
    pub stage: String,
    /// Optimizer steps taken.
    pub step: usize,
    /// Epochs finished (SFT).
    pub epoch: usize,
    /// Steps skipped for a non-finite loss or gradient.
    pub skipped_steps: usize,
    /// Best validation figure so far and the step it was reached at.
    pub best: Option<(f64, usize)>,
    /// Validations without improvement (early stopping).
    pub stale_validations: usize,
    /// The run's seed (every random draw derives from it and the step).
    pub seed: u64,
    /// SHA-256 of every other file of the checkpoint, by path relative to its folder.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

impl TrainingState {
    /// A run of `stage` that has not taken a step yet.
    pub fn start(stage: &str, seed: u64) -> Self {
        Self {
            stage: stage.into(),
            step: 0,
            epoch: 0,
            skipped_steps: 0,
            best: None,
            stale_validations: 0,
            seed,
            files: BTreeMap::new(),
        }
    }
}

fn fail(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The file of frozen parameters a stage has written, so that its later checkpoints link it
/// instead of writing and hashing the same bytes again. Start with `FrozenWeights::default()`
/// and pass the same value to every [`save_checkpoint`] of the stage.
#[derive(Debug, Clone, Default)]
pub struct FrozenWeights {
    written: Option<WrittenFrozen>,
}

#[derive(Debug, Clone)]
struct WrittenFrozen {
    /// `frozen.bpk` of the newest checkpoint that has it.
    path: PathBuf,
    sha256: String,
    /// Ids of the parameters it holds: another set means another file.
    params: BTreeSet<u64>,
}

const FROZEN_FILE: &str = "frozen.bpk";
const MODEL_FILE: &str = "model.bpk";

/// The ids of the parameters that do not train, when `model` is under autodiff (outside it
/// nothing tells a frozen parameter from a trained one, so nothing is split off).
fn frozen_parameters(model: &Gemma3ForConditionalGeneration) -> Option<BTreeSet<u64>> {
    struct Frozen {
        ids: BTreeSet<u64>,
        autodiff: bool,
    }
    impl ModuleVisitor for Frozen {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            self.autodiff |= value.is_autodiff();
            if !value.is_require_grad() {
                self.ids.insert(param.id.val());
            }
        }
    }
    let mut frozen = Frozen {
        ids: BTreeSet::new(),
        autodiff: false,
    };
    model.visit(&mut frozen);
    frozen.autodiff.then_some(frozen.ids)
}

/// Write the parameters at `paths` (all of them when `None`) to `file`.
fn write_parameters(
    model: &Gemma3ForConditionalGeneration,
    file: &Path,
    paths: Option<Vec<String>>,
) -> Result<()> {
    let mut store = BurnpackStore::from_file(file).overwrite(true);
    if let Some(paths) = paths {
        store = store.with_filter(PathFilter::new().with_full_paths(paths));
    }
    model
        .save_into(&mut store)
        .map_err(|e| fail(file, format!("saving the model: {e}")))
}

/// Write the model into the checkpoint folder `scratch`: trained parameters to `model.bpk`,
/// frozen ones to `frozen.bpk` (linked from `frozen`'s earlier file when it holds the same
/// parameters). Returns the checksums already known, by file name.
fn write_model(
    scratch: &Path,
    model: &Gemma3ForConditionalGeneration,
    frozen: &mut FrozenWeights,
) -> Result<BTreeMap<String, String>> {
    let mut known = BTreeMap::new();
    let model_file = scratch.join(MODEL_FILE);
    let frozen_ids = frozen_parameters(model).unwrap_or_default();
    let (mut frozen_paths, mut trained_paths) = (Vec::new(), Vec::new());
    for tensor in model.collect(None, None, false) {
        if tensor.param_id.is_some_and(|id| frozen_ids.contains(&id)) {
            frozen_paths.push(tensor.name);
        } else {
            trained_paths.push(tensor.name);
        }
    }
    if frozen_paths.is_empty() || trained_paths.is_empty() {
        write_parameters(model, &model_file, None)?;
        return Ok(known);
    }
    let frozen_file = scratch.join(FROZEN_FILE);
    let linked = frozen
        .written
        .as_ref()
        .filter(|w| w.params == frozen_ids)
        .filter(|w| std::fs::hard_link(&w.path, &frozen_file).is_ok())
        .map(|w| w.sha256.clone());
    let sha256 = match linked {
        Some(sha256) => sha256,
        None => {
            write_parameters(model, &frozen_file, Some(frozen_paths))?;
            sha256_file(&frozen_file)?
        }
    };
    write_parameters(model, &model_file, Some(trained_paths))?;
    known.insert(FROZEN_FILE.to_string(), sha256.clone());
    frozen.written = Some(WrittenFrozen {
        path: frozen_file,
        sha256,
        params: frozen_ids,
    });
    Ok(known)
}

/// Write `name` under `dir` atomically and return its path. `frozen` carries the stage's frozen
/// parameters file from one save to the next (see [`FrozenWeights`]).
pub fn save_checkpoint(
    dir: &Path,
    name: &str,
    model: &Gemma3ForConditionalGeneration,
    optimizer: &ModuleOptimizer,
    state: &TrainingState,
    lora: Option<&LoraConfig>,
    frozen: &mut FrozenWeights,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let target = dir.join(name);
    let scratch = dir.join(format!(".{name}.partial"));
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
    }
    std::fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
    let known = write_model(&scratch, model, frozen)?;
    optimizer
        .save(scratch.join("optimizer.bpk"))
        .map_err(|e| fail(&scratch, format!("saving the optimizer: {e:?}")))?;
    if let Some(lora) = lora {
        save_adapter(model, lora, &scratch.join("adapter"))?;
    }
    let mut state = state.clone();
    state.files = checksums(&scratch, &known)?;
    let json = serde_json::to_string_pretty(&state).map_err(|e| fail(&scratch, e.to_string()))?;
    let state_path = scratch.join("state.json");
    chex_data::write_atomic(&state_path, json.as_bytes()).map_err(|e| Error::io(&state_path, e))?;
    // Everything on the disk before the folder takes the checkpoint's name.
    chex_data::fs::sync_tree(&scratch).map_err(|e| Error::io(&scratch, e))?;
    let old = dir.join(format!(".{name}.old"));
    if target.exists() {
        std::fs::rename(&target, &old).map_err(|e| Error::io(&target, e))?;
    }
    std::fs::rename(&scratch, &target).map_err(|e| Error::io(&target, e))?;
    chex_data::fs::sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    if let Some(written) = frozen.written.as_mut() {
        written.path = target.join(FROZEN_FILE);
    }
    Ok(target)
}

/// Every file under `dir` but `state.json`, by relative path, with its SHA-256 (hex); those in
/// `known` are taken from it rather than read again.
fn checksums(dir: &Path, known: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).map_err(|e| Error::io(&folder, e))? {
            let path = entry.map_err(|e| Error::io(&folder, e))?.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            if relative == "state.json" {
                continue;
            }
            let sha256 = match known.get(&relative) {
                Some(sha256) => sha256.clone(),
                None => sha256_file(&path)?,
            };
            out.insert(relative, sha256);
        }
    }
    Ok(out)
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Read a checkpoint's `state.json` and check every file against its recorded checksum; an
/// unreadable state, a missing file or a changed byte is an error naming the file.
pub fn verified_state(path: &Path) -> Result<TrainingState> {
    let state_path = path.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|_| {
        fail(
            path,
            "has no readable state.json: the checkpoint is incomplete",
        )
    })?;
    let state: TrainingState =
        serde_json::from_str(&text).map_err(|e| fail(&state_path, e.to_string()))?;
    for (file, expected) in &state.files {
        let full = path.join(file);
        if !full.exists() {
            return Err(fail(&full, "is missing from the checkpoint"));
        }
        let found = sha256_file(&full)?;
        if &found != expected {
            return Err(fail(
                &full,
                format!(
                    "does not match the checksum recorded when it was saved (sha256 {expected}, \
                     now {found}): the file was changed or damaged"
                ),
            ));
        }
    }
    Ok(state)
}

/// Put checkpoint `name` under `dir` back after a crash during its save: when the name is
/// missing, the new copy (`.{name}.partial`, if it was finished and verifies) or else the
/// previous one (`.{name}.old`) takes it. Returns whether anything was moved.
pub fn recover_checkpoint(dir: &Path, name: &str) -> Result<bool> {
    let target = dir.join(name);
    let scratch = dir.join(format!(".{name}.partial"));
    let old = dir.join(format!(".{name}.old"));
    let mut moved = false;
    if !target.exists() {
        let source = if scratch.exists() && verified_state(&scratch).is_ok() {
            Some(&scratch)
        } else if old.exists() {
            Some(&old)
        } else {
            None
        };
        if let Some(source) = source {
            eprintln!(
                "recovering checkpoint {} from {} (a save was interrupted)",
                target.display(),
                source.display()
            );
            std::fs::rename(source, &target).map_err(|e| Error::io(&target, e))?;
            chex_data::fs::sync_dir(dir).map_err(|e| Error::io(dir, e))?;
            moved = true;
        }
    }
    if target.exists() && old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(moved)
}

/// Restore a checkpoint onto a model of the same structure (same preset, same LoRA targets)
/// and a fresh optimizer.
pub fn load_checkpoint(
    path: &Path,
    model: Gemma3ForConditionalGeneration,
    optimizer: ModuleOptimizer,
) -> Result<
    (
        Gemma3ForConditionalGeneration,
        ModuleOptimizer,
        TrainingState,
    ),
    Error,
> {
    let state = verified_state(path)?;
    let model = read_model_files(path, model)?;
    let optimizer = optimizer.load(path.join("optimizer.bpk")).map_err(|e| {
        fail(
            &path.join("optimizer.bpk"),
            format!("cannot be read ({e:?}); is it truncated?"),
        )
    })?;
    Ok((model, optimizer, state))
}

/// Remove a stage's checkpoints before a fresh start, so a best checkpoint of an earlier run
/// is never mistaken for this run's.
pub fn clear_stage(dir: &Path, stage: &str) -> Result<()> {
    for name in [format!("{stage}-best"), format!("{stage}-last")] {
        let path = dir.join(name);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Restore only the model of a checkpoint (for evaluation, or as the next stage's start), onto
/// a model of the same structure, keeping that model's precision: trained weights were saved
/// as f32 masters and come back in the model's dtype.
pub fn load_checkpoint_model(
    path: &Path,
    model: Gemma3ForConditionalGeneration,
) -> Result<Gemma3ForConditionalGeneration> {
    let dtype = model.dtype();
    Ok(read_checkpoint_model(path, model)?.with_dtype(dtype))
}

/// The model of a checkpoint exactly as saved, every tensor in the dtype it was written in
/// (what resuming needs: f32 masters and adapters, frozen weights in the model's dtype).
pub(crate) fn read_checkpoint_model(
    path: &Path,
    model: Gemma3ForConditionalGeneration,
) -> Result<Gemma3ForConditionalGeneration> {
    verified_state(path)?;
    read_model_files(path, model)
}

/// [`read_checkpoint_model`] without checking the files again: `frozen.bpk` (when the
/// checkpoint has one) and `model.bpk` together must hold every parameter.
fn read_model_files(
    path: &Path,
    mut model: Gemma3ForConditionalGeneration,
) -> Result<Gemma3ForConditionalGeneration> {
    let frozen_file = path.join(FROZEN_FILE);
    let split = frozen_file.exists();
    let mut applied = BTreeSet::new();
    let mut read = |file: &Path, model: &mut Gemma3ForConditionalGeneration| {
        let mut store = BurnpackStore::from_file(file).allow_partial(split);
        let result = model
            .load_from(&mut store)
            .map_err(|e| fail(file, format!("cannot be read ({e}); is it truncated?")))?;
        applied.extend(result.applied);
        Ok::<_, Error>(result.missing)
    };
    if split {
        read(&frozen_file, &mut model)?;
    }
    let model_file = path.join(MODEL_FILE);
    let missing = read(&model_file, &mut model)?;
    if let Some((missing, _)) = missing.iter().find(|(name, _)| !applied.contains(name)) {
        let files = if split {
            format!("{MODEL_FILE} nor {FROZEN_FILE}")
        } else {
            MODEL_FILE.to_string()
        };
        return Err(fail(
            path,
            format!("has no tensor `{missing}` in {files} (a different model or LoRA setting?)"),
        ));
    }
    Ok(model)
}

/// Continue from `path` when there is a checkpoint there (an unreadable or damaged one is an
/// error naming it), keeping the vision tower frozen when asked (loading restores values and ids, not which parameters are frozen).
pub fn resume_from(
    path: &Path,
    model: Gemma3ForConditionalGeneration,
    optimizer: ModuleOptimizer,
    freeze_vision: bool,
) -> Result<
    Option<(
        Gemma3ForConditionalGeneration,
        ModuleOptimizer,
        TrainingState,
    )>,
    Error,
> {
    if !path.exists() {
        return Ok(None);
    }
    // A folder that is there but cannot be read is an error, never a silent fresh start.
    let (mut model, optimizer, state) = load_checkpoint(path, model, optimizer)?;
    if freeze_vision {
        model.model.vision_tower =
            chex_model::burn::module::Module::freeze(model.model.vision_tower);
    }
    eprintln!(
        "resuming {} from {} (epoch {}, step {})",
        state.stage,
        path.display(),
        state.epoch,
        state.step
    );
    Ok(Some((model, optimizer, state)))
}

/// `path` with its state, when it is a finished checkpoint.
pub fn resumable(path: &Path) -> Option<(PathBuf, TrainingState)> {
    let text = std::fs::read_to_string(path.join("state.json")).ok()?;
    let state: TrainingState = serde_json::from_str(&text).ok()?;
    Some((path.to_path_buf(), state))
}

/// The checkpoint under `dir` with the most steps, ignoring unfinished ones.
pub fn latest_checkpoint(dir: &Path) -> Option<(PathBuf, TrainingState)> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .filter_map(|p| {
            let text = std::fs::read_to_string(p.join("state.json")).ok()?;
            let state: TrainingState = serde_json::from_str(&text).ok()?;
            Some((p, state))
        })
        .max_by_key(|(_, s)| s.step)
}
