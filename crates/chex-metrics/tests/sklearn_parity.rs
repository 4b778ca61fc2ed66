//! The metrics reproduce scikit-learn on random cases written by
//! `scripts/make_metrics_fixture.py` (to 1e-9), and the bootstrap behaves as a bootstrap must.

use chex_metrics::{
    BootstrapConfig, EvalInput, ZeroDivision, evaluate, markdown_f1_table, paired_bootstrap,
    per_label_csv,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    sklearn: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    zero_division: String,
    truth: Vec<Vec<u8>>,
    predicted: Vec<Vec<u8>>,
    precision: Vec<Option<f64>>,
    recall: Vec<Option<f64>>,
    f1: Vec<Option<f64>>,
    macro_precision: Option<f64>,
    macro_recall: Option<f64>,
    macro_f1: Option<f64>,
    micro_precision: Option<f64>,
    micro_recall: Option<f64>,
    micro_f1: Option<f64>,
    sample_jaccard: Option<f64>,
    exact_match: Option<f64>,
    hamming_loss: Option<f64>,
}

fn close(what: &str, case: usize, ours: f64, theirs: Option<f64>) {
    match theirs {
        None => assert!(
            ours.is_nan(),
            "case {case} {what}: sklearn NaN, ours {ours}"
        ),
        Some(t) => assert!(
            (ours - t).abs() <= 1e-9,
            "case {case} {what}: sklearn {t}, ours {ours}"
        ),
    }
}

fn bools(rows: &[Vec<u8>]) -> Vec<Vec<bool>> {
    rows.iter()
        .map(|r| r.iter().map(|&v| v == 1).collect())
        .collect()
}

#[test]
fn matches_scikit_learn_on_the_fixture() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sklearn_metrics.json"
    ))
    .unwrap();
    let fixture: Fixture = serde_json::from_str(&text).unwrap();
    assert!(
        fixture.cases.len() >= 30,
        "fixture from scikit-learn {}",
        fixture.sklearn
    );
    let mut jaccard_checked = 0;
    for (i, case) in fixture.cases.iter().enumerate() {
        let zd: ZeroDivision = case.zero_division.parse().unwrap();
        let (truth, predicted) = (bools(&case.truth), bools(&case.predicted));
        let labels: Vec<String> = (0..truth[0].len()).map(|l| format!("L{l}")).collect();
        let e = evaluate(
            EvalInput {
                labels: &labels,
                truth: &truth,
                predicted: &predicted,
                parsed: None,
            },
            zd,
            None,
        )
        .unwrap();
        for (l, scores) in e.per_label.iter().enumerate() {
            close("precision", i, scores.precision, case.precision[l]);
            close("recall", i, scores.recall, case.recall[l]);
            close("f1", i, scores.f1, case.f1[l]);
        }
        close(
            "macro_precision",
            i,
            e.macro_precision,
            case.macro_precision,
        );
        close("macro_recall", i, e.macro_recall, case.macro_recall);
        close("macro_f1", i, e.macro_f1, case.macro_f1);
        close(
            "micro_precision",
            i,
            e.micro_precision,
            case.micro_precision,
        );
        close("micro_recall", i, e.micro_recall, case.micro_recall);
        close("micro_f1", i, e.micro_f1, case.micro_f1);
        close("exact_match", i, e.exact_match, case.exact_match);
        close("hamming_loss", i, e.hamming_loss, case.hamming_loss);
        if case.sample_jaccard.is_some() {
            close("sample_jaccard", i, e.sample_jaccard, case.sample_jaccard);
            jaccard_checked += 1;
        }
    }
    assert!(jaccard_checked >= 20);
}

fn synthetic(n: usize, flip_every: usize) -> (Vec<String>, Vec<Vec<bool>>, Vec<Vec<bool>>) {
    let labels: Vec<String> = (0..4).map(|l| format!("L{l}")).collect();
    let truth: Vec<Vec<bool>> = (0..n)
        .map(|i| (0..4).map(|l| (i * 7 + l * 3) % 5 < 2).collect())
        .collect();
    let predicted = truth
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.iter()
                .enumerate()
                .map(|(l, &v)| if (i + l) % flip_every == 0 { !v } else { v })
                .collect()
        })
        .collect();
    (labels, truth, predicted)
}

#[test]
fn bootstrap_intervals_cover_the_estimate_narrow_with_n_and_repeat_with_the_seed() {
    let config = BootstrapConfig {
        resamples: 400,
        confidence: 0.95,
        seed: 5,
    };
    let width = |n: usize| {
        let (labels, truth, predicted) = synthetic(n, 4);
        let input = EvalInput {
            labels: &labels,
            truth: &truth,
            predicted: &predicted,
            parsed: None,
        };
        let e = evaluate(input, ZeroDivision::Zero, Some(&config)).unwrap();
        let ci = e.macro_f1_ci.unwrap();
        assert!(
            ci.low <= e.macro_f1 && e.macro_f1 <= ci.high,
            "{ci:?} vs {}",
            e.macro_f1
        );
        // Same seed, same intervals.
        assert_eq!(
            e,
            evaluate(input, ZeroDivision::Zero, Some(&config)).unwrap()
        );
        ci.high - ci.low
    };
    let (small, large) = (width(50), width(800));
    assert!(
        large < small / 2.0,
        "width at n=800 {large} vs n=50 {small}"
    );
}

#[test]
fn paired_bootstrap_detects_a_real_difference_and_not_a_null_one() {
    let config = BootstrapConfig {
        resamples: 500,
        confidence: 0.95,
        seed: 9,
    };
    let (_, truth, worse) = synthetic(400, 3);
    let (_, _, better) = synthetic(400, 11);
    let (macro_diff, micro_diff) =
        paired_bootstrap(&truth, &worse, &better, ZeroDivision::Zero, &config).unwrap();
    assert!(
        macro_diff.delta > 0.1 && macro_diff.interval.low > 0.0 && macro_diff.p_value < 0.01,
        "{macro_diff:?}"
    );
    assert!(micro_diff.interval.low > 0.0);
    let (same, _) = paired_bootstrap(&truth, &worse, &worse, ZeroDivision::Zero, &config).unwrap();
    assert_eq!(
        (
            same.delta,
            same.interval.low,
            same.interval.high,
            same.p_value
        ),
        (0.0, 0.0, 0.0, 1.0)
    );
}

#[test]
fn tables_have_labels_as_rows_and_macro_f1_last() {
    let (labels, truth, predicted) = synthetic(60, 5);
    let parsed: Vec<bool> = (0..60).map(|i| i % 10 != 0).collect();
    let e = evaluate(
        EvalInput {
            labels: &labels,
            truth: &truth,
            predicted: &predicted,
            parsed: Some(&parsed),
        },
        ZeroDivision::Zero,
        Some(&BootstrapConfig::default()),
    )
    .unwrap();
    assert!((e.unparseable_rate - 0.1).abs() < 1e-12);
    let table = markdown_f1_table(&[("Base", &e), ("SFT", &e)]).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2 + 4 + 2);
    assert!(lines[0].contains("Base") && lines[0].contains("SFT"));
    assert!(
        lines.last().unwrap().starts_with("| **Macro-F1**") && lines.last().unwrap().contains('[')
    );
    let csv = per_label_csv(&[("SFT", &e)]).unwrap();
    assert_eq!(csv.lines().count(), 5);
    let json = serde_json::to_string(&e).unwrap();
    let back: chex_metrics::Evaluation = serde_json::from_str(&json).unwrap();
    assert_eq!(back.per_label, e.per_label);
}
