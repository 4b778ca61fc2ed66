//! The data → metrics path of the study at miniature size: synthetic sites written and read
//! back by the real loaders, balanced draws, a baseline, and tables whose numbers are the
//! evaluation's.

use chex_grpo::baseline::{PixelLogistic, PixelLogisticConfig, pooled_features};
use chex_grpo::data::synth::SynthConfig;
use chex_grpo::data::{
    BalancedSamplerConfig, CHEXREASON_NIH_EVAL_LABELS, ImageCache, ImageSpec, LoadOptions,
    NihToChexpert, UncertaintyPolicy, ViewFilter, balanced_draws, load_chexpert, load_nih,
    write_synthetic_sites,
};
use chex_grpo::eval::{project_predictions, truth_matrix};
use chex_grpo::metrics::{EvalInput, ZeroDivision, evaluate, markdown_f1_table};

#[test]
fn miniature_study_scores_both_sites() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SynthConfig::miniature(4);
    config.site_a.patients = 120;
    let sites = write_synthetic_sites(dir.path(), &config, &|| {}).unwrap();
    let frontal = LoadOptions {
        view_filter: ViewFilter::Frontal,
        check_images_exist: true,
        ..Default::default()
    };
    let train = load_chexpert(&sites.site_a_dir.join("train.csv"), &frontal).unwrap();
    let test_a = load_chexpert(&sites.site_a_dir.join("valid.csv"), &frontal).unwrap();
    let test_b = load_nih(&sites.site_b_dir, &frontal)
        .unwrap()
        .nih_to_chexpert(&NihToChexpert::default())
        .unwrap()
        .restrict_labels(&CHEXREASON_NIH_EVAL_LABELS)
        .unwrap();
    let pool: Vec<usize> = (0..train.len()).collect();
    let draws =
        balanced_draws(&train, &pool, &[60, 20], &BalancedSamplerConfig::default()).unwrap();
    let (fit, val) = (
        train.subset(&draws[0].indices),
        train.subset(&draws[1].indices),
    );
    let cache = ImageCache::new(ImageSpec::siglip(32));
    let features = |d: &chex_grpo::data::Dataset| -> Vec<Vec<f32>> {
        d.samples
            .iter()
            .map(|s| pooled_features(&cache.get(&s.image).unwrap().pixels, 32, 8))
            .collect()
    };
    let policy = UncertaintyPolicy::PositiveOnly;
    let config = PixelLogisticConfig {
        epochs: 50,
        ..Default::default()
    };
    let model = PixelLogistic::fit(
        &features(&fit),
        &truth_matrix(&fit, policy),
        &features(&val),
        &truth_matrix(&val, policy),
        &config,
    );
    let labels = train.label_space.labels().to_vec();
    for test in [&test_a, &test_b] {
        let truth = truth_matrix(test, policy);
        let predicted = project_predictions(
            &labels,
            test.label_space.labels(),
            &model.predict(&features(test)),
        )
        .unwrap();
        let e = evaluate(
            EvalInput {
                labels: test.label_space.labels(),
                truth: &truth,
                predicted: &predicted,
                parsed: None,
            },
            ZeroDivision::Zero,
            None,
        )
        .unwrap();
        assert_eq!(e.per_label.len(), test.label_space.len());
        assert!((0.0..=1.0).contains(&e.macro_f1));
        let table = markdown_f1_table(&[("Pixel logistic", &e)]).unwrap();
        assert!(table.contains(&format!("**{:.3}**", e.macro_f1)), "{table}");
    }
    assert_eq!(test_b.label_space.len(), 9);
}
