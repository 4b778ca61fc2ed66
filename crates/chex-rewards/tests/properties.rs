//! Property tests: the parser never panics, and a perfect answer earns each reward's maximum.

use chex_rewards::{
    F1Reward, FormatReward, HardReward, NuancedConfig, NuancedReward, OutputFormat, ParseMode,
    Reward, RewardContext, StrictJaccardReward, parse_output,
};
use proptest::prelude::*;

fn answer_text(labels: &[usize], context: &RewardContext) -> String {
    let names: Vec<&str> = labels
        .iter()
        .map(|&l| context.vocabulary.labels()[l].as_str())
        .collect();
    format!(
        "<think>Looking at the film.</think>\n<solution>{}</solution>",
        names.join(", ")
    )
}

proptest! {
    #[test]
    fn parser_never_panics(text in ".{0,300}", tagged in prop::collection::vec(prop::sample::select(vec!["<think>", "</think>", "<solution>", "</solution>", "x", " ", "é", "<", ">"]), 0..30)) {
        for mode in [ParseMode::Strict, ParseMode::Lenient] {
            let joined = tagged.concat();
            for input in [text.as_str(), joined.as_str()] {
                let parsed = parse_output(input, &OutputFormat::default(), mode);
                if parsed.strict_format {
                    prop_assert!(parsed.answer.is_some());
                }
                let context = RewardContext { mode, ..RewardContext::default() };
                let prepared = context.prepare(input, 10, &[1]);
                NuancedReward::new(NuancedConfig::default(), 14).score(&prepared);
            }
        }
    }

    #[test]
    fn perfect_answer_gets_the_maximum(truth in prop::collection::btree_set(0usize..14, 1..5), other in prop::collection::btree_set(0usize..14, 0..6), tokens in 0usize..600) {
        let context = RewardContext::default();
        let truth: Vec<usize> = truth.into_iter().collect();
        let other: Vec<usize> = other.into_iter().collect();
        let perfect = context.prepare(&answer_text(&truth, &context), tokens, &truth);
        let imperfect = context.prepare(&answer_text(&other, &context), tokens, &truth);
        let hard = HardReward { length_penalty: 0.1, min_tokens: 32 };
        let rewards: Vec<Box<dyn Fn() -> Box<dyn Reward>>> = vec![
            Box::new(move || Box::new(hard.clone())),
            Box::new(|| Box::new(NuancedReward::new(NuancedConfig::default(), 14))),
            Box::new(|| Box::new(StrictJaccardReward)),
            Box::new(|| Box::new(F1Reward)),
            Box::new(|| Box::new(FormatReward)),
        ];
        for make in &rewards {
            let (best, worse) = (make().score(&perfect), make().score(&imperfect));
            prop_assert!(best >= worse, "{}: perfect {best} < other {worse}", make().name());
        }
        prop_assert_eq!(NuancedReward::new(NuancedConfig::default(), 14).score(&perfect), 150.0);
        prop_assert_eq!(F1Reward.score(&perfect), 1.0);
    }
}
