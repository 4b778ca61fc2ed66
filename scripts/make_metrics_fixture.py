#!/usr/bin/env python3
"""Writes crates/chex-metrics/tests/fixtures/sklearn_metrics.json: random multi-label cases
scored by scikit-learn, which the Rust metrics must reproduce to 1e-9.

    python3 -m venv /tmp/skl && /tmp/skl/bin/pip install numpy scikit-learn
    /tmp/skl/bin/python scripts/make_metrics_fixture.py
"""
import json
import math
import pathlib
import warnings

import numpy as np
import sklearn
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    hamming_loss,
    jaccard_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
)

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/chex-metrics/tests/fixtures/sklearn_metrics.json"


def clean(x):
    """JSON has no NaN: write null, which the Rust test reads back as NaN."""
    if isinstance(x, (list, tuple, np.ndarray)):
        return [clean(v) for v in x]
    x = float(x)
    return None if math.isnan(x) else x


def main():
    rng = np.random.default_rng(20261125)
    cases = []
    for case in range(36):
        n = int(rng.integers(1, 50))
        labels = int(rng.integers(2, 9))  # one column would read as binary, not multilabel
        density = rng.uniform(0.0, 0.5, size=labels)
        density[rng.random(labels) < 0.2] = 0.0  # some labels with no positives at all
        truth = (rng.random((n, labels)) < density).astype(int)
        flip = rng.uniform(0.0, 0.4)
        noise = rng.random((n, labels)) < flip
        predicted = np.where(noise, 1 - truth, truth)
        predicted[:, rng.random(labels) < 0.15] = 0  # some labels never predicted
        zd_name = ["0", "1", "nan"][case % 3]
        zd = {"0": 0.0, "1": 1.0, "nan": np.nan}[zd_name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, r, f, _ = precision_recall_fscore_support(truth, predicted, average=None, zero_division=zd)
            cases.append(
                {
                    "zero_division": zd_name,
                    "truth": truth.tolist(),
                    "predicted": predicted.tolist(),
                    "precision": clean(p),
                    "recall": clean(r),
                    "f1": clean(f),
                    "macro_precision": clean(precision_score(truth, predicted, average="macro", zero_division=zd)),
                    "macro_recall": clean(recall_score(truth, predicted, average="macro", zero_division=zd)),
                    "macro_f1": clean(f1_score(truth, predicted, average="macro", zero_division=zd)),
                    "micro_precision": clean(precision_score(truth, predicted, average="micro", zero_division=zd)),
                    "micro_recall": clean(recall_score(truth, predicted, average="micro", zero_division=zd)),
                    "micro_f1": clean(f1_score(truth, predicted, average="micro", zero_division=zd)),
                    "exact_match": clean(accuracy_score(truth, predicted)),
                    "hamming_loss": clean(hamming_loss(truth, predicted)),
                }
            )
            # jaccard_score accepts only 0 and 1 as zero_division.
            if zd_name != "nan":
                cases[-1]["sample_jaccard"] = clean(
                    jaccard_score(truth, predicted, average="samples", zero_division=zd)
                )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"sklearn": sklearn.__version__, "cases": cases}, separators=(",", ":")))
    print(f"wrote {len(cases)} cases to {OUT} with scikit-learn {sklearn.__version__}")


if __name__ == "__main__":
    main()
