//! Glue between datasets and metrics: truth matrices under a policy, and predictions made in
//! one label space scored in another (CheXpert-space predictions on NIH's shared subset).

use crate::data::{Dataset, UncertaintyPolicy};

/// `truth[sample][label]` under an uncertainty policy; a label the policy leaves unscored
/// (U-Ignore on `-1.0`) counts as negative here, since the metrics do not mask cells.
pub fn truth_matrix(dataset: &Dataset, policy: UncertaintyPolicy) -> Vec<Vec<bool>> {
    dataset
        .samples
        .iter()
        .map(|s| {
            s.targets(policy)
                .into_iter()
                .map(|t| t == Some(true))
                .collect()
        })
        .collect()
}

/// Re-orders predictions made over `from` labels onto `to` labels by name. A `to` label that
/// `from` lacks is an error naming it, never a silent column of negatives.
pub fn project_predictions(
    from: &[String],
    to: &[String],
    predicted: &[Vec<bool>],
) -> Result<Vec<Vec<bool>>, String> {
    let columns: Vec<usize> = to
        .iter()
        .map(|label| {
            from.iter().position(|f| f == label).ok_or_else(|| {
                format!(
                    "label `{label}` is not among the predicted labels ({})",
                    from.join(", ")
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(predicted
        .iter()
        .map(|row| columns.iter().map(|&c| row[c]).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_reorders_by_name_and_rejects_unknown_labels() {
        let from = vec!["A".to_string(), "B".to_string(), "C".to_string()];
        let to = vec!["C".to_string(), "A".to_string()];
        let out = project_predictions(&from, &to, &[vec![true, false, false]]).unwrap();
        assert_eq!(out, vec![vec![false, true]]);
        assert!(
            project_predictions(&from, &["D".to_string()], &[vec![true, false, false]])
                .unwrap_err()
                .contains("`D`")
        );
    }
}
