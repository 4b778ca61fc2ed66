//! The GRPO objective as pure burn tensor functions: group advantages, per-token importance
//! ratios with asymmetric clipping, the k3 KL estimator and TRL's loss normalisations
//! (`grpo`, `bnpo`, `dr_grpo`, `dapo`). The functions arrive with the trainers.
