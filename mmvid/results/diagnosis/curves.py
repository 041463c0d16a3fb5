"""The curves of a run's metrics.jsonl: memorisation (train minus held-out accuracy of each modality, masking)
over the epochs, rho (Eq. 6, s_strong / s_weak) on the train monitor and held out, the bounded utilisation rate,
and which modality was learned first."""

from __future__ import annotations

import math
from typing import Any

from mmvid.results.diagnosis.utilisation import utilisation


def curves(recs: list[dict[str, Any]], modalities: list[str]) -> dict[str, Any]:
    """Per epoch: each modality's train and held-out accuracy (masking) and their gap (memorisation),
    rho on train and held out, the bounded utilisation rate (two modalities: A(M minus m) is the other
    modality alone), and which modality was learned first (its train accuracy reached half its best first)."""
    held = "test" if any("test_acc" in r for r in recs) else "val"
    get = lambda r, k: None if r.get(k) is None else float(r[k])  # noqa: E731
    out: dict[str, Any] = {"epoch": [int(r["epoch"]) + 1 for r in recs], "held_out": held}
    for m in modalities:
        tr = [get(r, f"train_acc_{m}") for r in recs]
        te = [get(r, f"{held}_acc_{m}") for r in recs]
        out[f"train_acc_{m}"], out[f"{held}_acc_{m}"] = tr, te
        out[f"gap_{m}"] = [None if a is None or b is None else a - b for a, b in zip(tr, te)]
    out["train_rho"] = [get(r, "train_rho") if "train_rho" in r else get(r, "rho") for r in recs]
    out[f"{held}_rho"] = [get(r, f"{held}_rho") for r in recs]
    if len(modalities) == 2:
        for split in ("train", held):
            for m in modalities:
                other = [k for k in modalities if k != m][0]
                out[f"{split}_utilisation_{m}"] = [
                    None if r.get(f"{split}_acc") is None or r.get(f"{split}_acc_{other}") is None
                    else utilisation(float(r[f"{split}_acc"]), float(r[f"{split}_acc_{other}"])) for r in recs]
    half = {}
    for m in modalities:
        tr = [v for v in out[f"train_acc_{m}"] if v is not None]
        if tr:
            half[m] = next(i for i, v in enumerate(tr) if v >= 0.5 * max(tr)) + 1
    out["epoch_to_half_best"] = half
    early = recs[:min(len(recs), max(2, math.ceil(len(recs) / 4)))]
    if early and all(r.get(f"s_{m}") is not None for r in early for m in modalities):
        # The modality learned first: the largest Eq. 5 train score s_m (the numerator of rho > 1 in the
        # paper's Fig. 1), summed over the first quarter of the epochs (at least two: one epoch of a small
        # data set is a few steps, too few to tell).
        out["early_epochs"] = len(early)
        out["early_score"] = {m: float(sum(r[f"s_{m}"] for r in early)) for m in modalities}
        out["learned_first"] = max(modalities, key=lambda m: out["early_score"][m])
    return out
