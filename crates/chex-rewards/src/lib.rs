//! Reward functions for chest X-ray reports: the `<think>…</think><solution>…</solution>`
//! parser, ChexReason's hard and nuanced rewards, NV-Reason-CXR's pair, format and per-sample
//! F1 rewards. The functions arrive with the trainers.
