#!/usr/bin/env python3
"""Writes crates/chex-objective/tests/fixtures/objective.json: GRPO advantages, losses and
diagnostics computed with numpy from TRL's published formulas (GRPOTrainer._compute_loss),
for the Rust objective to reproduce.

    /tmp/skl/bin/python scripts/make_objective_fixture.py   # any Python with numpy
"""
import json
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/chex-objective/tests/fixtures/objective.json"
EPS = 1e-4


def advantages(rewards, group, scaling):
    g = rewards.reshape(-1, group)
    centred = (g - g.mean(axis=1, keepdims=True)).reshape(-1)
    if scaling == "group":
        std = np.repeat(g.std(axis=1, ddof=1), group)  # torch.std is unbiased
        return centred / (std + EPS)
    if scaling == "batch":
        return centred / (rewards.std(ddof=1) + EPS)
    return centred


def loss(logps, old, ref, adv, mask, ent, cfg, num_items):
    log_ratio = logps - old
    if cfg["importance"] == "sequence":
        w = (log_ratio * mask).sum(-1) / np.maximum(mask.sum(-1), 1.0)
        log_w = np.repeat(w[:, None], logps.shape[1], axis=1)
    else:
        log_w = log_ratio
    coef1 = np.exp(log_w)
    coef2 = np.clip(coef1, 1 - cfg["epsilon_low"], 1 + cfg["epsilon_high"])
    a = adv[:, None]
    per_token = -np.minimum(coef1 * a, coef2 * a)
    kl = np.exp(ref - logps) - (ref - logps) - 1
    if cfg["beta"] != 0:
        per_token = per_token + cfg["beta"] * kl
    kind = cfg["loss_type"]
    if kind == "grpo":
        value = ((per_token * mask).sum(-1) / np.maximum(mask.sum(-1), 1.0)).mean()
    elif kind == "bnpo":
        value = (per_token * mask).sum() / max(mask.sum(), 1.0)
    elif kind == "dr_grpo":
        value = (per_token * mask).sum() / (per_token.shape[0] * cfg["max_completion_length"])
    else:
        value = (per_token * mask).sum() / num_items
    active = max(mask.sum(), 1.0)
    mm = lambda x: float((x * mask).sum() / active)
    low = (coef1 < 1 - cfg["epsilon_low"]) & (a < 0)
    high = (coef1 > 1 + cfg["epsilon_high"]) & (a > 0)
    return {
        "loss": float(value),
        "kl": mm(kl) if cfg["beta"] != 0 else None,
        "entropy": mm(ent),
        "clip_low": mm(low.astype(float)),
        "clip_high": mm(high.astype(float)),
        "clip_region": mm((low | high).astype(float)),
    }


def main():
    rng = np.random.default_rng(7)
    batch, group, length = 8, 4, 9
    lengths = rng.integers(1, length + 1, size=batch)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.float64)
    logps = -rng.exponential(1.0, size=(batch, length))
    old = logps + rng.normal(0, 0.25, size=(batch, length))  # some ratios fall outside the clip range
    ref = logps + rng.normal(0, 0.3, size=(batch, length))
    ent = rng.uniform(0, 3, size=(batch, length))
    rewards = rng.uniform(0, 1, size=batch).round(2)
    rewards[4:8] = 0.5  # one group with equal rewards: zero advantage
    num_items = float(mask.sum() * 2)  # as if the optimiser step had two such micro-batches
    cases = []
    for scaling in ["group", "batch", "none"]:
        adv = advantages(rewards, group, scaling)
        for loss_type in ["grpo", "bnpo", "dr_grpo", "dapo"]:
            for importance in ["token", "sequence"]:
                for beta in [0.0, 0.15]:
                    cfg = {
                        "epsilon_low": 0.15,
                        "epsilon_high": 0.22,
                        "beta": beta,
                        "loss_type": loss_type,
                        "importance": importance,
                        "max_completion_length": 12,
                    }
                    cases.append({"scaling": scaling, "config": cfg, "advantages": adv.tolist(), **loss(logps, old, ref, adv, mask, ent, cfg, num_items)})
    out = {
        "group_size": group,
        "rewards": rewards.tolist(),
        "logps": logps.tolist(),
        "old_logps": old.tolist(),
        "ref_logps": ref.tolist(),
        "entropies": ent.tolist(),
        "mask": mask.tolist(),
        "num_items_in_batch": num_items,
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, separators=(",", ":")))
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
