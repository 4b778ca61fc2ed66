//! The loaders and decoders on real NIH ChestX-ray14 images and labels.

mod common;

use std::collections::{HashMap, HashSet};

use chex_data::{
    ImageCache, ImageSpec, LoadOptions, NihToChexpert, OfficialSplit, OnError, UncertaintyPolicy,
    ViewFilter, load_nih, patient_split, prepare_image,
};

#[test]
fn nih1000_label_counts_match_the_published_counts() {
    let root = common::shared_data().join("nih1000");
    let options = LoadOptions {
        check_images_exist: true,
        ..LoadOptions::default()
    };
    let data = load_nih(&root, &options).expect("nih1000 loads");
    assert_eq!(data.len(), 1000);
    assert!(data.report.skipped.is_empty());
    let counts: HashMap<&str, usize> = data
        .label_space
        .labels()
        .iter()
        .map(String::as_str)
        .zip(data.positive_counts(UncertaintyPolicy::PositiveOnly))
        .collect();
    // The counts stated in shared/data/README.md.
    let expected = [
        ("No Finding", 499),
        ("Effusion", 170),
        ("Infiltration", 162),
        ("Atelectasis", 95),
        ("Cardiomegaly", 83),
        ("Consolidation", 42),
        ("Pneumothorax", 40),
        ("Nodule", 39),
        ("Emphysema", 37),
        ("Mass", 35),
        ("Fibrosis", 32),
        ("Edema", 31),
        ("Pleural_Thickening", 29),
        ("Pneumonia", 11),
        ("Hernia", 9),
    ];
    for (label, count) in expected {
        assert_eq!(counts[label], count, "{label}");
    }
    let pa = data
        .samples
        .iter()
        .filter(|s| s.view.position.as_deref() == Some("PA"))
        .count();
    assert_eq!((pa, data.len() - pa), (637, 363));
    let train = data.official_split(OfficialSplit::Train).len();
    let test = data.official_split(OfficialSplit::Test).len();
    assert_eq!((train, test), (800, 200));

    let pa_only = load_nih(
        &root,
        &LoadOptions {
            view_filter: ViewFilter::Pa,
            ..options
        },
    )
    .unwrap();
    assert_eq!((pa_only.len(), pa_only.report.filtered_by_view), (637, 363));
}

#[test]
fn nih_maps_into_chexpert_space() {
    let root = common::shared_data().join("nih1000");
    let nih = load_nih(&root, &LoadOptions::default()).unwrap();
    let mapped = nih.nih_to_chexpert(&NihToChexpert::default()).unwrap();
    let lesion = mapped.label_space.index_of("Lung Lesion").unwrap();
    let (mass, nodule) = (
        nih.label_space.index_of("Mass").unwrap(),
        nih.label_space.index_of("Nodule").unwrap(),
    );
    let expected = nih
        .samples
        .iter()
        .filter(|s| {
            s.observations[mass] == chex_data::Observation::Positive
                || s.observations[nodule] == chex_data::Observation::Positive
        })
        .count();
    assert_eq!(
        mapped.positive_counts(UncertaintyPolicy::PositiveOnly)[lesion],
        expected
    );
    let opacity = mapped.label_space.index_of("Lung Opacity").unwrap();
    assert!(
        !mapped.annotated[opacity],
        "Infiltration is not mapped by default"
    );
    let all = nih.nih_to_chexpert(&NihToChexpert::all()).unwrap();
    assert_eq!(
        all.positive_counts(UncertaintyPolicy::PositiveOnly)[opacity],
        162
    );
    let subset = mapped
        .restrict_labels(&chex_data::CHEXREASON_NIH_EVAL_LABELS)
        .unwrap();
    assert_eq!(subset.label_space.len(), 9);
    assert!(subset.annotated.iter().all(|a| *a));
}

#[test]
fn patient_level_split_keeps_patients_on_one_side() {
    let root = common::shared_data().join("nih1000");
    let data = load_nih(&root, &LoadOptions::default()).unwrap();
    // The official-format lists share patients across sides, which is why we re-split.
    let official: Vec<HashSet<&str>> = [OfficialSplit::Train, OfficialSplit::Test]
        .iter()
        .map(|&split| {
            data.samples
                .iter()
                .filter(|s| s.split == split)
                .map(|s| s.patient_id.as_str())
                .collect()
        })
        .collect();
    assert!(official[0].intersection(&official[1]).count() > 0);

    let parts = patient_split(&data, &[0.7, 0.1, 0.2], 7).unwrap();
    assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 1000);
    let patients: Vec<HashSet<&str>> = parts
        .iter()
        .map(|p| {
            p.iter()
                .map(|&i| data.samples[i].patient_id.as_str())
                .collect()
        })
        .collect();
    for a in 0..3 {
        for b in a + 1..3 {
            assert!(
                patients[a].is_disjoint(&patients[b]),
                "parts {a} and {b} share a patient"
            );
        }
    }
    assert!(
        (parts[0].len() as f64 - 700.0).abs() < 60.0,
        "{}",
        parts[0].len()
    );
    assert_eq!(parts, patient_split(&data, &[0.7, 0.1, 0.2], 7).unwrap());
}

#[test]
fn real_images_decode_at_both_resolutions() {
    let data = common::shared_data();
    let small = prepare_image(
        &data.join("nih1000/images/00000001_000.png"),
        &ImageSpec::siglip(64),
    )
    .unwrap();
    assert_eq!(small.pixels.len(), 64 * 64);
    assert!(small.pixels.iter().all(|v| (-1.0..=1.0).contains(v)));
    // The same radiograph at 512×512 grey, reduced to 64: close to NIH's own 64×64 copy.
    let reduced = prepare_image(
        &data.join("nih-fullres/images/00000001_000.png"),
        &ImageSpec::siglip(64),
    )
    .unwrap();
    let mean_abs: f32 = small
        .pixels
        .iter()
        .zip(&reduced.pixels)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / 4096.0;
    assert!(
        mean_abs < 0.1,
        "downsampled full-res differs from the 64×64 copy by {mean_abs}"
    );

    let full = prepare_image(
        &data.join("nih-fullres/images/00027426_000.png"),
        &ImageSpec::siglip(512),
    )
    .unwrap();
    assert_eq!(full.pixels.len(), 512 * 512);

    let nih = load_nih(
        &data.join("nih1000"),
        &LoadOptions {
            on_error: OnError::FailFast,
            ..Default::default()
        },
    )
    .unwrap();
    let cache = ImageCache::new(ImageSpec::siglip(32));
    let paths: Vec<_> = nih
        .samples
        .iter()
        .take(64)
        .map(|s| s.image.clone())
        .collect();
    let first: Vec<_> = cache
        .get_many(&paths)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(cache.len(), 64);
    let second = cache.get(&paths[3]).unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&first[3], &second),
        "second read comes from the cache"
    );
}
