//! The synthetic two-site benchmark: read back by the real loaders, deterministic in its seed,
//! reused when unchanged, and sampled by the balanced sampler.

use std::collections::HashSet;

use chex_data::synth::SynthConfig;
use chex_data::{
    BalancedSamplerConfig, LoadOptions, NihToChexpert, UncertaintyPolicy, ViewFilter,
    balanced_draws, load_chexpert, load_nih, write_synthetic_sites,
};

#[test]
fn both_sites_load_with_the_real_loaders_and_are_deterministic() {
    let config = SynthConfig::miniature(11);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = write_synthetic_sites(a.path(), &config, &|| {}).unwrap();
    let second = write_synthetic_sites(b.path(), &config, &|| {}).unwrap();
    assert_eq!(
        (first.site_a_images, first.site_b_images),
        (second.site_a_images, second.site_b_images)
    );
    assert_eq!(
        chex_data::synth::planned_images(&config),
        first.site_a_images + first.site_b_images + first.site_c_images
    );
    let site_c =
        load_chexpert(&first.site_c_dir.join("train.csv"), &LoadOptions::default()).unwrap();
    assert!(!site_c.is_empty(), "site C (the pretraining site) loads");
    for rel in [
        "site-a/CheXpert-v1.0-small/train.csv",
        "site-b/Data_Entry_2017.csv",
        "site-b/images/00000001_000.png",
    ] {
        assert_eq!(
            std::fs::read(a.path().join(rel)).unwrap(),
            std::fs::read(b.path().join(rel)).unwrap(),
            "{rel} differs between runs"
        );
    }
    let strict = LoadOptions {
        check_images_exist: true,
        ..Default::default()
    };
    let train = load_chexpert(&first.site_a_dir.join("train.csv"), &strict).unwrap();
    let valid = load_chexpert(&first.site_a_dir.join("valid.csv"), &strict).unwrap();
    assert_eq!(train.len() + valid.len(), first.site_a_images);
    let patients = |d: &chex_data::Dataset| {
        d.samples
            .iter()
            .map(|s| s.patient_id.clone())
            .collect::<HashSet<_>>()
    };
    assert!(patients(&train).is_disjoint(&patients(&valid)));
    let nih = load_nih(&first.site_b_dir, &strict).unwrap();
    assert_eq!(nih.len(), first.site_b_images);
    nih.nih_to_chexpert(&NihToChexpert::default()).unwrap();

    // Site A's training file has CheXpert's uncertain cells and lateral views.
    let counts = train.observation_counts();
    assert!(
        counts.iter().map(|c| c[2]).sum::<usize>() > 0,
        "no -1.0 cells"
    );
    let frontal = load_chexpert(
        &first.site_a_dir.join("train.csv"),
        &LoadOptions {
            view_filter: ViewFilter::Frontal,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(frontal.report.filtered_by_view > 0, "no lateral views");

    let reused = write_synthetic_sites(a.path(), &config, &|| {}).unwrap();
    assert!(reused.reused);
    let other_seed = SynthConfig::miniature(12);
    assert!(
        !write_synthetic_sites(a.path(), &other_seed, &|| {})
            .unwrap()
            .reused
    );
}

#[test]
fn spurious_cue_ties_devices_to_edema_at_site_a_only() {
    let mut config = SynthConfig::default();
    config.site_a.patients = 300;
    config.site_b.patients = 300;
    let dir = tempfile::tempdir().unwrap();
    let summary = write_synthetic_sites(dir.path(), &config, &|| {}).unwrap();
    let truth = |site: &str| -> Vec<chex_data::synth::SynthRecord> {
        serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(site).join("truth.json")).unwrap(),
        )
        .unwrap()
    };
    use chex_data::synth::Finding::{Edema, SupportDevices};
    let rate = |records: &[chex_data::synth::SynthRecord]| {
        let with: Vec<_> = records
            .iter()
            .filter(|r| r.findings.contains(&Edema))
            .collect();
        with.iter()
            .filter(|r| r.findings.contains(&SupportDevices))
            .count() as f64
            / with.len() as f64
    };
    let (a, b) = (rate(&truth("site-a")), rate(&truth("site-b")));
    assert!(a > 0.85, "P(devices | edema) at site A = {a}");
    assert!(b < 0.3, "P(devices | edema) at site B = {b}");
    assert!(summary.site_a_images > 300);
}

#[test]
fn balanced_draws_meet_the_five_percent_floor_and_are_disjoint() {
    let config = SynthConfig::default();
    let dir = tempfile::tempdir().unwrap();
    let mut small = config.clone();
    small.site_a.patients = 500;
    small.site_b.patients = 10;
    let summary = write_synthetic_sites(dir.path(), &small, &|| {}).unwrap();
    let data = load_chexpert(
        &summary.site_a_dir.join("train.csv"),
        &LoadOptions {
            view_filter: ViewFilter::Frontal,
            ..Default::default()
        },
    )
    .unwrap();
    let pool: Vec<usize> = (0..data.len()).collect();
    let sampler = BalancedSamplerConfig {
        seed: 3,
        ..Default::default()
    };
    let draws = balanced_draws(&data, &pool, &[200, 100, 50], &sampler).unwrap();
    let first = &draws[0];
    assert_eq!(first.indices.len(), 200);
    assert!(first.shortfalls.is_empty(), "{:?}", first.shortfalls);
    let counts = data
        .subset(&first.indices)
        .positive_counts(UncertaintyPolicy::PositiveOnly);
    assert_eq!(counts, first.label_counts);
    for (label, count) in data.label_space.labels().iter().zip(&counts) {
        assert!(*count >= 10, "{label} appears in {count} of 200");
    }
    let patients: Vec<HashSet<&str>> = draws
        .iter()
        .map(|d| {
            d.indices
                .iter()
                .map(|&i| data.samples[i].patient_id.as_str())
                .collect()
        })
        .collect();
    assert!(
        patients[0].is_disjoint(&patients[1])
            && patients[1].is_disjoint(&patients[2])
            && patients[0].is_disjoint(&patients[2])
    );
    // Same seed, same draws; too large a request is an error, not a silent short draw.
    assert_eq!(
        balanced_draws(&data, &pool, &[200, 100, 50], &sampler).unwrap()[2].indices,
        draws[2].indices
    );
    assert!(balanced_draws(&data, &pool, &[data.len() + 1], &sampler).is_err());
}

#[test]
fn knobs_change_one_site_and_the_fingerprint() {
    use chex_data::synth::{Finding, SiteKnobs};
    let base = SynthConfig::miniature(5);
    let mut changed = base.clone();
    let knobs: SiteKnobs =
        toml::from_str("exposure = 0.8\n[prevalence]\nsupport_devices = 0.5\n").unwrap();
    knobs
        .apply(&mut changed.site_b, "data.synthetic.site_b")
        .unwrap();
    assert_eq!(changed.site_b.style.exposure, 0.8);
    let devices = Finding::ALL
        .iter()
        .position(|f| *f == Finding::SupportDevices)
        .unwrap();
    assert_eq!(changed.site_b.prevalence[devices], 0.5);
    assert_eq!(changed.site_a, base.site_a);
    assert_ne!(changed.fingerprint(), base.fingerprint());
    assert_eq!(base.fingerprint(), SynthConfig::miniature(5).fingerprint());

    let mut off = base.clone();
    off.set_cue_probability(0.0).unwrap();
    assert_eq!(
        off.site_a.spurious.as_ref().unwrap().probability_with_cause,
        0.0
    );
    assert!(off.set_cue_probability(1.5).is_err());

    let unknown: SiteKnobs = toml::from_str("[prevalence]\nedemaa = 0.1\n").unwrap();
    let e = unknown
        .apply(&mut off.site_a, "data.synthetic.site_a")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data.synthetic.site_a") && e.contains("edemaa"),
        "{e}"
    );
    assert!(toml::from_str::<SiteKnobs>("exposur = 1.0").is_err());
}
