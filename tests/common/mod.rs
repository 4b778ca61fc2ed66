//! What the integration tests share.

/// `--set` values that shrink the main job (`configs/tiny-cpu.toml`) to seconds: the
/// miniature synthetic sites, draws of a dozen images, one SFT epoch, two GRPO steps and
/// 12-token answers.
pub const MINIATURE: [&str; 15] = [
    "data.synthetic.miniature=true",
    "pretrain.size=12",
    "pretrain.training.epochs=1",
    "data.sft_size=12",
    "data.rl_size=6",
    "data.validation_size=4",
    "sft.epochs=1",
    "grpo.steps=2",
    "grpo.eval_every=1",
    "grpo.sample_every=1",
    "grpo.max_completion_length=12",
    "eval.max_new_tokens=12",
    "eval.batch=4",
    "eval.bootstrap_resamples=50",
    "eval.traces=2",
];
