//! The objective against values computed independently with numpy from TRL's formulas
//! (`scripts/make_objective_fixture.py`), plus gradient sanity checks.

use burn::tensor::{Device, Tensor, TensorData};
use chex_objective::{
    AdvantageScaling, GrpoBatch, GrpoLossConfig, ImportanceLevel, LossType, group_advantages,
    grpo_loss,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    group_size: usize,
    rewards: Vec<f32>,
    logps: Vec<Vec<f32>>,
    old_logps: Vec<Vec<f32>>,
    ref_logps: Vec<Vec<f32>>,
    entropies: Vec<Vec<f32>>,
    mask: Vec<Vec<f32>>,
    num_items_in_batch: f64,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    scaling: String,
    config: Config,
    advantages: Vec<f32>,
    loss: f64,
    kl: Option<f64>,
    entropy: f64,
    clip_low: f64,
    clip_high: f64,
    clip_region: f64,
}

#[derive(Deserialize)]
struct Config {
    epsilon_low: f64,
    epsilon_high: f64,
    beta: f64,
    loss_type: String,
    importance: String,
    max_completion_length: usize,
}

fn matrix(rows: &[Vec<f32>], device: &Device) -> Tensor<2> {
    let (r, c) = (rows.len(), rows[0].len());
    Tensor::from_data(TensorData::new(rows.concat(), [r, c]), device)
}

fn close(what: &str, ours: f64, theirs: f64) {
    // f32 tensors against f64 numpy.
    assert!(
        (ours - theirs).abs() <= 1e-5 * theirs.abs().max(1.0),
        "{what}: ours {ours}, numpy {theirs}"
    );
}

fn load() -> Fixture {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/objective.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn advantages_losses_and_diagnostics_match_numpy() {
    let fx = load();
    let device = chex_model::select_device("cpu").unwrap();
    assert_eq!(fx.cases.len(), 48);
    for case in &fx.cases {
        let scaling = match case.scaling.as_str() {
            "group" => AdvantageScaling::Group,
            "batch" => AdvantageScaling::Batch,
            _ => AdvantageScaling::None,
        };
        let rewards = Tensor::<1>::from_floats(fx.rewards.as_slice(), &device);
        let advantages = group_advantages(rewards, fx.group_size, scaling).unwrap();
        let ours: Vec<f32> = advantages.to_data().try_to_vec::<f32>().unwrap();
        for (a, b) in ours.iter().zip(&case.advantages) {
            close(
                &format!("advantage ({})", case.scaling),
                *a as f64,
                *b as f64,
            );
        }
        let c = &case.config;
        let config = GrpoLossConfig {
            epsilon_low: c.epsilon_low,
            epsilon_high: c.epsilon_high,
            beta: c.beta,
            loss_type: match c.loss_type.as_str() {
                "grpo" => LossType::Grpo,
                "bnpo" => LossType::Bnpo,
                "dr_grpo" => LossType::DrGrpo,
                _ => LossType::Dapo,
            },
            importance: if c.importance == "sequence" {
                ImportanceLevel::Sequence
            } else {
                ImportanceLevel::Token
            },
            top_entropy_quantile: 1.0,
            // The fixture holds the formulas before TRL's bias-corrected KL (tests/trl_step.rs
            // checks that one against TRL itself).
            use_bias_correction_kl: false,
            max_completion_length: c.max_completion_length,
        };
        let batch = GrpoBatch {
            logps: matrix(&fx.logps, &device),
            old_logps: Some(matrix(&fx.old_logps, &device)),
            ref_logps: Some(matrix(&fx.ref_logps, &device)),
            advantages,
            mask: matrix(&fx.mask, &device),
            entropies: Some(matrix(&fx.entropies, &device)),
            num_items_in_batch: Some(fx.num_items_in_batch),
            accumulation_steps: 1,
        };
        let out = grpo_loss(batch, &config).unwrap();
        let what = format!(
            "{} {} {} beta={}",
            case.scaling, c.loss_type, c.importance, c.beta
        );
        close(
            &format!("loss {what}"),
            out.loss.into_scalar::<f32>() as f64,
            case.loss,
        );
        match (out.kl, case.kl) {
            (Some(a), Some(b)) => close(&format!("kl {what}"), a, b),
            (None, None) => {}
            other => panic!("kl presence differs for {what}: {other:?}"),
        }
        close(
            &format!("entropy {what}"),
            out.entropy.unwrap(),
            case.entropy,
        );
        close(&format!("clip_low {what}"), out.clip_low, case.clip_low);
        close(&format!("clip_high {what}"), out.clip_high, case.clip_high);
        close(
            &format!("clip_region {what}"),
            out.clip_region,
            case.clip_region,
        );
    }
    // The fixture exercises clipping on both sides, or the clip checks above prove little.
    assert!(
        fx.cases.iter().any(|c| c.clip_low > 0.0) && fx.cases.iter().any(|c| c.clip_high > 0.0)
    );
}

#[test]
fn first_update_gradient_is_minus_advantage_over_normaliser() {
    // With old = current (μ = 1) and β = 0, ρ = 1 and ∂loss/∂logp = −A·mask / (B·L) for dr_grpo.
    let device = chex_model::select_device("cpu").unwrap().autodiff();
    let logps =
        Tensor::<2>::from_floats([[-1.0, -2.0, -0.5], [-0.3, -0.7, -0.2]], &device).require_grad();
    let mask = Tensor::<2>::from_floats([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], &device);
    let advantages = Tensor::<1>::from_floats([0.8, -0.4], &device);
    let batch = GrpoBatch {
        logps: logps.clone(),
        old_logps: None,
        ref_logps: None,
        advantages,
        mask,
        entropies: None,
        num_items_in_batch: None,
        accumulation_steps: 1,
    };
    let config = GrpoLossConfig {
        beta: 0.0,
        max_completion_length: 4,
        ..Default::default()
    };
    let out = grpo_loss(batch, &config).unwrap();
    assert_eq!((out.clip_low, out.clip_high), (0.0, 0.0));
    let grads = out.loss.backward();
    let grad: Vec<f32> = logps
        .grad(&grads)
        .unwrap()
        .to_data()
        .try_to_vec::<f32>()
        .unwrap();
    let expected = [-0.1, -0.1, 0.0, 0.05, 0.05, 0.05];
    for (g, e) in grad.iter().zip(expected) {
        assert!((g - e).abs() < 1e-6, "{grad:?}");
    }
}

#[test]
fn bad_inputs_are_named() {
    let device = chex_model::select_device("cpu").unwrap();
    let rewards = Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device);
    assert!(
        group_advantages(rewards, 2, AdvantageScaling::Group)
            .unwrap_err()
            .to_string()
            .contains("groups of 2")
    );
    let logps = Tensor::<2>::zeros([2, 3], &device);
    let batch = GrpoBatch {
        logps: logps.clone(),
        old_logps: None,
        ref_logps: None,
        advantages: Tensor::zeros([2], &device),
        mask: Tensor::ones([2, 4], &device),
        entropies: None,
        num_items_in_batch: None,
        accumulation_steps: 1,
    };
    assert!(
        grpo_loss(batch.clone(), &GrpoLossConfig::default())
            .unwrap_err()
            .to_string()
            .contains("mask")
    );
    let batch = GrpoBatch {
        mask: Tensor::ones([2, 3], &device),
        ..batch
    };
    assert!(
        grpo_loss(batch, &GrpoLossConfig::default())
            .unwrap_err()
            .to_string()
            .contains("reference")
    );
}
