"""Which modality dominates: the Shapley values of a split summarised over the split, per class and per sample
(the samples and classes most dominated by one modality), and the per-sample table ``samples_<split>.csv``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from mmvid.results.diagnosis.passes import SplitPass
from mmvid.results.diagnosis.shapley import balancebenchmark_shapley, coalitions, shapley


def shares(phi: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-sample share of each modality: phi_m / sum_k |phi_k| (0 where every phi is 0)."""
    total = sum(np.abs(v) for v in phi.values())
    return {m: np.divide(v, total, out=np.zeros_like(v), where=total > 1e-12) for m, v in phi.items()}


def shapley_summary(sp: SplitPass, modalities: list[str], class_names: list[str], names: list[str],
                    top: int = 10) -> dict[str, Any]:
    """Mean Shapley values (probability and accuracy views), per class, and the samples and classes most
    dominated by one modality (largest share phi_m / sum_k |phi_k|)."""
    empty, full = frozenset(), frozenset(modalities)
    phi = shapley(sp.prob, modalities)
    phi_acc = shapley(sp.correct, modalities)
    share = shares(phi)
    per_class = {}
    for c, cname in enumerate(class_names):
        idx = sp.labels == c
        if idx.any():
            per_class[cname] = {"n": int(idx.sum()), **{m: float(phi[m][idx].mean()) for m in modalities}}
    dominated = []
    for m in modalities:
        order = np.argsort(-share[m], kind="stable")[:top]
        dominated += [{"modality": m, "name": names[int(sp.rows[i])], "class": class_names[int(sp.labels[i])],
                       "share": float(share[m][i]), "phi": {k: float(phi[k][i]) for k in modalities}}
                      for i in order if share[m][i] > 0]
    class_share = {c: {m: v[m] / max(sum(abs(v[k]) for k in modalities), 1e-12) for m in modalities}
                   for c, v in per_class.items()}
    return {
        "n": int(len(sp.labels)),
        "value_full": float(sp.prob[full].mean()), "value_empty": float(sp.prob[empty].mean()),
        "accuracy_full": float(sp.correct[full].mean()), "accuracy_empty": float(sp.correct[empty].mean()),
        "phi": {m: float(phi[m].mean()) for m in modalities},
        "phi_accuracy": {m: float(phi_acc[m].mean()) for m in modalities},
        "share": {m: float(phi[m].mean() / max(sum(abs(phi[k].mean()) for k in modalities), 1e-12)) for m in modalities},
        "coalition_accuracy": {"+".join(sorted(s)) or "none": float(v.mean()) for s, v in sp.correct.items()},
        "balancebenchmark_shapley": balancebenchmark_shapley({s: float(v.mean()) for s, v in sp.correct.items()}, modalities),
        "per_class": per_class,
        "class_share": class_share,
        "most_dominated_samples": dominated,
        "most_dominated_classes": {m: sorted(class_share, key=lambda c: -class_share[c][m])[:3] for m in modalities},
    }


def write_samples(sp: SplitPass, modalities: list[str], info, path: Path) -> Path:
    """One row per clip: name, class, each modality's Shapley value and share, and the fused model's
    true-class probability and correctness (every coalition's value is in the columns ``v_<coalition>``)."""
    phi = shapley(sp.prob, modalities)
    share = shares(phi)
    subsets = coalitions(modalities)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "class", *[f"phi_{m}" for m in modalities], *[f"share_{m}" for m in modalities],
                    *[f"v_{'+'.join(sorted(s)) or 'none'}" for s in subsets], "correct"])
        full = frozenset(modalities)
        for i in range(len(sp.labels)):
            w.writerow([info.names[int(sp.rows[i])], info.class_names[int(sp.labels[i])],
                        *[f"{phi[m][i]:.6g}" for m in modalities], *[f"{share[m][i]:.4f}" for m in modalities],
                        *[f"{sp.prob[s][i]:.6g}" for s in subsets], int(sp.correct[full][i])])
    return path
