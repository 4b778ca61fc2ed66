//! Training checkpoints: the model with its parameter ids (burnpack), the optimizer state,
//! the run's position (`state.json`), and the adapters in PEFT's layout for use elsewhere.
//!
//! A checkpoint is written into a hidden temporary folder (`.{name}.partial`), flushed to the
//! disk, and renamed into place; the previous one is moved aside (`.{name}.old`) first and
//! removed after. `state.json` is written last and records a SHA-256 of every other file, which
//! loading verifies. A crash at any instant leaves either the old checkpoint, the new one, or
//! both beside the name, and [`recover_checkpoint`] puts the newest complete one back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chex_model::Gemma3ForConditionalGeneration;
use chex_model::burn::optim::ModuleOptimizer;
use chex_model::burn::store::{BurnpackStore, ModuleSnapshot};
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

/// Write `name` under `dir` atomically and return its path.
pub fn save_checkpoint(
    dir: &Path,
    name: &str,
    model: &Gemma3ForConditionalGeneration,
    optimizer: &ModuleOptimizer,
    state: &TrainingState,
    lora: Option<&LoraConfig>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let target = dir.join(name);
    let scratch = dir.join(format!(".{name}.partial"));
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
    }
    std::fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
    let mut store = BurnpackStore::from_file(scratch.join("model.bpk")).overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| fail(&scratch, format!("saving the model: {e}")))?;
    optimizer
        .save(scratch.join("optimizer.bpk"))
        .map_err(|e| fail(&scratch, format!("saving the optimizer: {e:?}")))?;
    if let Some(lora) = lora {
        save_adapter(model, lora, &scratch.join("adapter"))?;
    }
    let mut state = state.clone();
    state.files = checksums(&scratch)?;
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
    Ok(target)
}

/// Every file under `dir` but `state.json`, by relative path, with its SHA-256 (hex).
fn checksums(dir: &Path) -> Result<BTreeMap<String, String>> {
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
            if relative != "state.json" {
                out.insert(relative, sha256_file(&path)?);
            }
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
    let model = read_checkpoint_model(path, model)?;
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
    mut model: Gemma3ForConditionalGeneration,
) -> Result<Gemma3ForConditionalGeneration> {
    verified_state(path)?;
    let mut store = BurnpackStore::from_file(path.join("model.bpk"));
    let result = model.load_from(&mut store).map_err(|e| {
        fail(
            &path.join("model.bpk"),
            format!("cannot be read ({e}); is it truncated?"),
        )
    })?;
    if let Some((missing, _)) = result.missing.first() {
        return Err(fail(
            &path.join("model.bpk"),
            format!("has no tensor `{missing}` (a different model or LoRA setting?)"),
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
