//! Any byte string, parsed strictly and leniently and scored: nothing may panic, and the
//! parser's invariants hold. Run: `cargo fuzz run parse_completion` in crates/chex-rewards.
#![no_main]

use chex_rewards::{NuancedConfig, NuancedReward, ParseMode, Reward, RewardContext};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for mode in [ParseMode::Strict, ParseMode::Lenient] {
        let context = RewardContext { mode, ..RewardContext::default() };
        let prepared = context.prepare(&text, data.len(), &[0, 3]);
        if prepared.parsed.strict_format {
            assert!(prepared.parsed.answer.is_some() && prepared.parsed.outside_chars == 0);
        }
        assert!(prepared.extracted.labels.iter().all(|&l| l < context.vocabulary.labels().len()));
        let score = NuancedReward::new(NuancedConfig::default(), 14).score(&prepared);
        assert!(score.is_finite());
    }
});
