//! Data and metrics throughput: decoding and resizing radiographs, bootstrap intervals at the
//! paper's test-set size, and synthetic-site generation. Figures go in docs/performance.md.
//!
//! `CHEX_SHARED_DATA=../shared/data cargo bench --bench data_and_metrics`

use std::path::PathBuf;

use chex_grpo::data::synth::SynthConfig;
use chex_grpo::data::{ImageSpec, prepare_image, write_synthetic_sites};
use chex_grpo::metrics::{BootstrapConfig, EvalInput, ZeroDivision, evaluate};
use criterion::{Criterion, criterion_group, criterion_main};

fn shared_data() -> PathBuf {
    std::env::var_os("CHEX_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data"))
}

fn decode(c: &mut Criterion) {
    let full = shared_data().join("nih-fullres/images/00000001_000.png");
    let small = shared_data().join("nih1000/images/00000001_000.png");
    if !full.is_file() {
        eprintln!(
            "skipping decode benches: {} not found (set CHEX_SHARED_DATA)",
            full.display()
        );
        return;
    }
    c.bench_function("decode 512x512 grey PNG to 64x64", |b| {
        b.iter(|| prepare_image(&full, &ImageSpec::siglip(64)).unwrap())
    });
    c.bench_function("decode 64x64 RGB PNG to 64x64", |b| {
        b.iter(|| prepare_image(&small, &ImageSpec::siglip(64)).unwrap())
    });
}

fn bootstrap(c: &mut Criterion) {
    // ChexReason-sized test set: 1,000 images × 14 labels.
    let labels: Vec<String> = (0..14).map(|l| format!("L{l}")).collect();
    let truth: Vec<Vec<bool>> = (0..1000)
        .map(|i| (0..14).map(|l| (i * 31 + l * 17) % 9 < 2).collect())
        .collect();
    let predicted: Vec<Vec<bool>> = (0..1000)
        .map(|i| (0..14).map(|l| (i * 13 + l * 7) % 9 < 2).collect())
        .collect();
    let config = BootstrapConfig {
        resamples: 1000,
        ..Default::default()
    };
    c.bench_function("evaluate 1000x14 with 1000 bootstrap resamples", |b| {
        b.iter(|| {
            let input = EvalInput {
                labels: &labels,
                truth: &truth,
                predicted: &predicted,
                parsed: None,
            };
            evaluate(input, ZeroDivision::Zero, Some(&config)).unwrap()
        })
    });
}

fn synthesis(c: &mut Criterion) {
    let config = SynthConfig::miniature(1);
    let images = chex_grpo::data::synth::planned_images(&config);
    let mut group = c.benchmark_group("synthetic sites");
    group.sample_size(10);
    group.bench_function(format!("write miniature sites ({images} images)"), |b| {
        b.iter(|| {
            let dir = tempfile::tempdir().unwrap();
            write_synthetic_sites(dir.path(), &config, &|| {}).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, decode, bootstrap, synthesis);
criterion_main!(benches);
