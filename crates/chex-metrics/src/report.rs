//! Writing evaluations out: JSON, CSV, and Markdown tables shaped like the paper's per-label
//! tables (labels as rows, checkpoints as columns, macro-F1 last).

use crate::bootstrap::Interval;
use crate::error::MetricsError;
use crate::evaluation::Evaluation;

fn fmt_score(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.3}")
    }
}

fn fmt_with_ci(v: f64, ci: Option<Interval>) -> String {
    match ci {
        Some(ci) => format!(
            "{} [{}, {}]",
            fmt_score(v),
            fmt_score(ci.low),
            fmt_score(ci.high)
        ),
        None => fmt_score(v),
    }
}

fn check_same_labels(columns: &[(&str, &Evaluation)]) -> Result<Vec<String>, MetricsError> {
    let first = columns.first().ok_or(MetricsError::Empty)?;
    let labels: Vec<String> = first.1.per_label.iter().map(|l| l.label.clone()).collect();
    for (name, e) in columns {
        let theirs: Vec<&String> = e.per_label.iter().map(|l| &l.label).collect();
        if theirs.len() != labels.len() || theirs.iter().zip(&labels).any(|(a, b)| *a != b) {
            return Err(MetricsError::Config(format!(
                "column `{name}` was scored on different labels than `{}`",
                first.0
            )));
        }
    }
    Ok(labels)
}

/// Per-label F1 with checkpoints as columns; macro-F1 and micro-F1 (with their 95% intervals
/// when computed) as the last rows.
pub fn markdown_f1_table(columns: &[(&str, &Evaluation)]) -> Result<String, MetricsError> {
    let labels = check_same_labels(columns)?;
    let mut out = String::from("| Label |");
    for (name, _) in columns {
        out.push_str(&format!(" {name} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(columns.len()));
    out.push('\n');
    for (i, label) in labels.iter().enumerate() {
        out.push_str(&format!("| {label} |"));
        for (_, e) in columns {
            out.push_str(&format!(" {} |", fmt_score(e.per_label[i].f1)));
        }
        out.push('\n');
    }
    out.push_str("| **Micro-F1** |");
    for (_, e) in columns {
        out.push_str(&format!(" {} |", fmt_with_ci(e.micro_f1, e.micro_f1_ci)));
    }
    out.push_str("\n| **Macro-F1** |");
    for (_, e) in columns {
        out.push_str(&format!(
            " **{}** |",
            fmt_with_ci(e.macro_f1, e.macro_f1_ci)
        ));
    }
    out.push('\n');
    Ok(out)
}

/// One row per (checkpoint, label): counts and scores.
pub fn per_label_csv(columns: &[(&str, &Evaluation)]) -> Result<String, MetricsError> {
    check_same_labels(columns)?;
    let mut out = String::from("checkpoint,label,support,tp,fp,fn,tn,precision,recall,f1\n");
    for (name, e) in columns {
        for l in &e.per_label {
            let c = l.confusion;
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{}\n",
                csv_field(name),
                csv_field(&l.label),
                l.support,
                c.tp,
                c.fp,
                c.fn_,
                c.tn,
                l.precision,
                l.recall,
                l.f1
            ));
        }
    }
    Ok(out)
}

/// One row per checkpoint: the aggregate scores.
pub fn summary_csv(columns: &[(&str, &Evaluation)]) -> String {
    let mut out = String::from(
        "checkpoint,samples,macro_f1,macro_f1_low,macro_f1_high,micro_f1,micro_f1_low,micro_f1_high,macro_precision,macro_recall,sample_jaccard,exact_match,hamming_loss,unparseable_rate\n",
    );
    for (name, e) in columns {
        let ci = |c: Option<Interval>| c.map_or((f64::NAN, f64::NAN), |c| (c.low, c.high));
        let (ml, mh) = ci(e.macro_f1_ci);
        let (ul, uh) = ci(e.micro_f1_ci);
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            csv_field(name),
            e.samples,
            e.macro_f1,
            ml,
            mh,
            e.micro_f1,
            ul,
            uh,
            e.macro_precision,
            e.macro_recall,
            e.sample_jaccard,
            e.exact_match,
            e.hamming_loss,
            e.unparseable_rate
        ));
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
