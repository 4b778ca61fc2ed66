//! Patient-level splits: every image of a patient lands on the same side.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};

/// Splits sample indices into parts whose sizes follow `fractions` (which must sum to 1),
/// never putting one patient in two parts. Patients are shuffled with `seed`, then assigned
/// in turn to the first part still short of its share of images.
pub fn patient_split(dataset: &Dataset, fractions: &[f64], seed: u64) -> Result<Vec<Vec<usize>>> {
    let total: f64 = fractions.iter().sum();
    if fractions.is_empty()
        || fractions.iter().any(|f| !(0.0..=1.0).contains(f))
        || (total - 1.0).abs() > 1e-6
    {
        return Err(DataError::Config(format!(
            "split fractions {fractions:?} must each be in [0, 1] and sum to 1"
        )));
    }
    // BTreeMap so the patient order before shuffling does not depend on hashing.
    let mut by_patient: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, sample) in dataset.samples.iter().enumerate() {
        by_patient
            .entry(sample.patient_id.as_str())
            .or_default()
            .push(i);
    }
    let mut patients: Vec<Vec<usize>> = by_patient.into_values().collect();
    patients.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));

    let n = dataset.len() as f64;
    let targets: Vec<f64> = fractions.iter().map(|f| f * n).collect();
    let mut parts: Vec<Vec<usize>> = vec![Vec::new(); fractions.len()];
    for images in patients {
        // The part with the largest remaining shortfall takes the patient, so small parts
        // still get filled when patients have many images.
        let part = (0..parts.len())
            .max_by(|&a, &b| {
                let short_a = targets[a] - parts[a].len() as f64;
                let short_b = targets[b] - parts[b].len() as f64;
                short_a.total_cmp(&short_b).then(b.cmp(&a))
            })
            .unwrap_or(0);
        parts[part].extend(images);
    }
    for part in &mut parts {
        part.sort_unstable();
    }
    Ok(parts)
}
