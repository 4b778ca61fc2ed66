//! Each reward's components on hand-worked examples.

use chex_rewards::{
    HardReward, NuancedConfig, NuancedReward, ParseMode, Reward, RewardContext, RewardSet,
    ShortnessPenalty, StrictJaccardReward,
};

fn ctx() -> RewardContext {
    RewardContext::default()
}

fn label(name: &str) -> usize {
    ctx().vocabulary.lookup(name).unwrap()
}

#[test]
fn hard_reward_jaccard_length_and_validity() {
    let truth = [label("Cardiomegaly"), label("Edema")];
    let half = ctx().prepare(
        "<think>t</think><solution>Cardiomegaly, Pleural Effusion</solution>",
        50,
        &truth,
    );
    let mut hard = HardReward {
        length_penalty: 0.2,
        min_tokens: 32,
    };
    assert!((hard.score(&half) - 1.0 / 3.0).abs() < 1e-12);
    let short = ctx().prepare(
        "<think>t</think><solution>Cardiomegaly, Edema</solution>",
        10,
        &truth,
    );
    assert!((hard.score(&short) - 0.8).abs() < 1e-12);
    let invalid = ctx().prepare(
        "<think>t</think><solution>Cardiomegaly, Dragons</solution>",
        50,
        &truth,
    );
    assert_eq!(hard.score(&invalid), 0.0);
    let unformatted = ctx().prepare("Cardiomegaly, Edema", 50, &truth);
    assert_eq!(hard.score(&unformatted), 0.0);
}

#[test]
fn nuanced_components() {
    let c = NuancedConfig::default();
    let truth = [label("Cardiomegaly"), label("Edema")];
    // 1 of 2 right, one false positive (No Finding), one duplicate, one invalid item.
    let text =
        "<think>t</think><solution>Cardiomegaly, No Finding, enlarged heart, dragons</solution>";
    let p = ctx().prepare(text, 50, &truth);
    let mut r = NuancedReward::new(c.clone(), 14);
    let expected = 30.0 * 0.5 + 20.0 * 0.5 - 10.0 - 25.0 - 100.0;
    assert!((r.score(&p) - expected).abs() < 1e-9, "{}", r.score(&p));

    // Frequency-weighted false positives: No Finding as the most frequent label costs 3×.
    let mut freq = vec![0.1; 14];
    freq[label("No Finding")] = 0.5;
    let mut weighted = NuancedReward::new(c.clone(), 14).with_label_frequencies(&freq);
    let fp = ctx().prepare(
        "<think>t</think><solution>Cardiomegaly, Edema, No Finding</solution>",
        50,
        &truth,
    );
    assert!((weighted.score(&fp) - (30.0 + 20.0 * 2.0 / 3.0 - 30.0)).abs() < 1e-9);

    // Text outside the blocks, in lenient mode.
    let lenient = RewardContext {
        mode: ParseMode::Lenient,
        ..ctx()
    };
    let chatty = lenient.prepare(
        "Hi <think>t</think><solution>Cardiomegaly, Edema</solution>",
        50,
        &truth,
    );
    assert_eq!(
        NuancedReward::new(c.clone(), 14).score(&chatty),
        150.0 - 20.0
    );
}

#[test]
fn collapse_guard_punishes_repeating_one_answer() {
    let config = NuancedConfig {
        allowed_repeats: 5,
        ..NuancedConfig::default()
    };
    let mut r = NuancedReward::new(config, 14);
    let always = ctx().prepare(
        "<think>t</think><solution>No Finding</solution>",
        50,
        &[label("No Finding")],
    );
    let scores: Vec<f64> = (0..40).map(|_| r.score(&always)).collect();
    assert_eq!(scores[0], 150.0);
    assert_eq!(scores[5], 150.0, "five earlier repeats are allowed");
    assert_eq!(scores[6], 120.0, "the sixth repeat costs 30");
    // After 20 predictions that all contain No Finding, collapse costs 50 more; repeats cap at 150.
    assert_eq!(scores[39], 150.0 - 150.0 - 50.0);
    // A different answer is not charged for repetition but still for the collapsed label.
    let other = ctx().prepare(
        "<think>t</think><solution>Edema</solution>",
        50,
        &[label("Edema")],
    );
    assert_eq!(r.score(&other), 150.0);
}

#[test]
fn nv_reason_pair_and_weighted_sum_statistics() {
    let truth = [label("Edema")];
    let strict = ctx().prepare(
        "<think>t</think><solution>Edema, Cardiomegaly</solution>",
        100,
        &truth,
    );
    assert_eq!(StrictJaccardReward.score(&strict), 0.5);
    let lenient = RewardContext {
        mode: ParseMode::Lenient,
        ..ctx()
    };
    let loose = lenient.prepare("ok <think>t</think><solution>Edema</solution>", 100, &truth);
    assert_eq!(StrictJaccardReward.score(&loose), 0.0);
    let mut short = ShortnessPenalty::default();
    assert_eq!(short.score(&strict), -0.75);
    let long = ctx().prepare("<think>t</think><solution>Edema</solution>", 900, &truth);
    assert_eq!(short.score(&long), 0.0);
    let tiny = ctx().prepare("<think>t</think><solution>Edema</solution>", 0, &truth);
    assert_eq!(short.score(&tiny), -1.0);

    let mut set = RewardSet::default()
        .with(1.0, StrictJaccardReward)
        .with(0.5, ShortnessPenalty::default());
    let batch = set.score_batch(&[strict, long]);
    assert_eq!(batch.total, vec![0.5 - 0.375, 1.0]);
    assert_eq!(batch.components[0].name, "strict_jaccard");
    assert_eq!(batch.components[0].mean, 0.75);
    assert_eq!(batch.components[0].std, 0.25);
}
