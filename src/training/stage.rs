//! What SFT and GRPO share around their steps: a [`Stage`] owns the run's checkpoint folder
//! and position ([`TrainingState`]), resumes from the last checkpoint, writes the JSONL log,
//! shows the progress bar, saves the best and last checkpoints, and at the end reloads the best.

use std::path::{Path, PathBuf};

use chex_model::burn::module::Module;
use chex_model::burn::optim::ModuleOptimizer;
use chex_model::lora::LoraConfig;
use chex_model::{Gemma3ForConditionalGeneration, ModelDtype};
use indicatif::ProgressBar;
use serde::Serialize;

use super::checkpoint::{
    FrozenWeights, TrainingState, clear_stage, read_checkpoint_model, recover_checkpoint,
    resume_from, save_checkpoint,
};
use super::log::JsonlLog;
use crate::error::{Error, Result};
use crate::progress::progress_bar;

/// Which way a validation figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// One training stage (`sft` or `grpo`) of a run under an output folder.
pub struct Stage {
    name: &'static str,
    checkpoints: PathBuf,
    out: PathBuf,
    /// Where the run stands; saved with every checkpoint.
    pub state: TrainingState,
    log: JsonlLog,
    bar: ProgressBar,
    lora: Option<LoraConfig>,
    /// The frozen parameters' file, written at the first save and linked after.
    frozen: FrozenWeights,
}

/// A stage opened, with the model and optimizer it continues from.
pub struct Opened {
    pub stage: Stage,
    pub model: Gemma3ForConditionalGeneration,
    pub optimizer: ModuleOptimizer,
}

impl Stage {
    /// Open stage `name` under `out` for a run of `total_steps` steps. With `resume`, a save
    /// interrupted by a crash is recovered first, then the `{name}-last` checkpoint (when there
    /// is one) replaces `model`, `optimizer` and the position; an unreadable or damaged one is
    /// an error, and so is a `{name}-best` without a `{name}-last` (resuming never deletes a
    /// checkpoint). A fresh start removes the stage's old checkpoints. The log
    /// (`{name}_log.jsonl`) is cut back to the position, so it always describes one run.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        name: &'static str,
        out: &Path,
        seed: u64,
        total_steps: usize,
        resume: bool,
        model: Gemma3ForConditionalGeneration,
        optimizer: ModuleOptimizer,
        freeze_vision: bool,
        lora: Option<LoraConfig>,
    ) -> Result<Opened> {
        let checkpoints = out.join("checkpoints");
        let mut state = TrainingState::start(name, seed);
        let (mut model, mut optimizer) = (model, optimizer);
        let last = checkpoints.join(format!("{name}-last"));
        let best = checkpoints.join(format!("{name}-best"));
        if resume {
            for which in ["last", "best"] {
                recover_checkpoint(&checkpoints, &format!("{name}-{which}"))?;
            }
            if let Some((m, o, s)) =
                resume_from(&last, model.clone(), optimizer.clone(), freeze_vision)?
            {
                model = m;
                optimizer = o;
                state = s;
            } else if best.exists() {
                // Starting afresh would replace it; a resume never throws a checkpoint away.
                return Err(Error::Checkpoint {
                    path: best.display().to_string(),
                    message: format!(
                        "exists without {name}-last to resume from; move it away to start \
                         {name} afresh"
                    ),
                });
            }
        } else {
            clear_stage(&checkpoints, name)?;
        }
        let log = JsonlLog::at_step(&out.join(format!("{name}_log.jsonl")), state.step)?;
        let bar = progress_bar(total_steps, &name.to_uppercase());
        bar.set_position(state.step as u64);
        Ok(Opened {
            stage: Self {
                name,
                checkpoints,
                out: out.to_path_buf(),
                state,
                log,
                bar,
                lora,
                frozen: FrozenWeights::default(),
            },
            model,
            optimizer,
        })
    }

    /// A second log of this stage (e.g. `grpo_samples.jsonl`), cut back to the position.
    pub fn side_log(&self, file: &str) -> Result<JsonlLog> {
        JsonlLog::at_step(&self.out.join(file), self.state.step)
    }

    /// Append a record to the stage's log.
    pub fn log<R: Serialize>(&mut self, record: &R) -> Result<()> {
        self.log.write(record)
    }

    /// Advance the progress bar by one step, showing `message`.
    pub fn progress(&self, message: String) {
        self.bar.set_message(message);
        self.bar.inc(1);
    }

    /// Record a validation figure; returns whether it is the best so far (a non-finite
    /// figure never is), and counts validations without improvement for early stopping.
    pub fn validated(&mut self, figure: f64, better: Better) -> bool {
        let improved = figure.is_finite()
            && self.state.best.is_none_or(|(b, _)| match better {
                Better::Lower => figure < b,
                Better::Higher => figure > b,
            });
        if improved {
            self.state.best = Some((figure, self.state.step));
            self.state.stale_validations = 0;
        } else {
            self.state.stale_validations += 1;
        }
        improved
    }

    /// Save `{name}-best`.
    pub fn save_best(
        &mut self,
        model: &Gemma3ForConditionalGeneration,
        optimizer: &ModuleOptimizer,
    ) -> Result<PathBuf> {
        self.save("best", model, optimizer)
    }

    /// Save `{name}-last` (what a resumed run continues from).
    pub fn save_last(
        &mut self,
        model: &Gemma3ForConditionalGeneration,
        optimizer: &ModuleOptimizer,
    ) -> Result<PathBuf> {
        self.save("last", model, optimizer)
    }

    fn save(
        &mut self,
        which: &str,
        model: &Gemma3ForConditionalGeneration,
        optimizer: &ModuleOptimizer,
    ) -> Result<PathBuf> {
        save_checkpoint(
            &self.checkpoints,
            &format!("{}-{which}", self.name),
            model,
            optimizer,
            &self.state,
            self.lora.as_ref(),
            &mut self.frozen,
        )
    }

    /// End the stage: clear the bar and return the best checkpoint's model (the last one's when
    /// no validation was finite), in inference mode and in `dtype` (the precision the stage's
    /// policy came in, whatever masters training kept), with where it was read from.
    pub fn finish(
        self,
        model: Gemma3ForConditionalGeneration,
        dtype: ModelDtype,
    ) -> Result<(Gemma3ForConditionalGeneration, PathBuf)> {
        self.bar.finish_and_clear();
        let best = self.checkpoints.join(format!("{}-best", self.name));
        let last = self.checkpoints.join(format!("{}-last", self.name));
        let path = if best.join("state.json").exists() {
            best
        } else if last.join("state.json").exists() {
            last
        } else {
            return Ok((model.valid().with_dtype(dtype), PathBuf::new()));
        };
        let model = read_checkpoint_model(&path, model)?.valid();
        Ok((model.with_dtype(dtype), path))
    }
}
