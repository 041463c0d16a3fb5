"""One eval-mode pass of a model over a split: each modality's features and every coalition's value (Eq. 5
masking), from which the Shapley values, the probes and the utilisation are computed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmvid.engine.loaders import to_device
from mmvid.engine.runtime import autocast
from mmvid.measures import eval_mode
from mmvid.results.diagnosis.shapley import coalitions

SPLITS = ("train", "test")  # train split and held-out data


@dataclass
class SplitPass:
    """One eval-mode pass over a split: labels (N,), cache rows (N,), each modality's features (N, d_m)
    and, per coalition, the true-class probability and correctness (N,) of the masked fused model."""

    labels: np.ndarray
    rows: np.ndarray
    features: dict[str, np.ndarray]
    prob: dict[frozenset[str], np.ndarray]
    correct: dict[frozenset[str], np.ndarray]


def split_pass(model, loader, device, rows: np.ndarray, amp: str = "off") -> SplitPass:
    """Features and every coalition's value (Eq. 5 masking) over one split, in the loader's order."""
    mods, subsets = model.modalities, coalitions(model.modalities)
    labels, feats = [], {m: [] for m in mods}
    prob = {s: [] for s in subsets}
    correct = {s: [] for s in subsets}
    with torch.no_grad(), eval_mode(model):  # the model's own mode again afterwards
        for inputs, y in loader:
            inputs, y = to_device(inputs, device), y.to(device)
            with autocast(device, amp):
                raw = model.encode(inputs, calibrate=False)
            raw = {m: v.float() for m, v in raw.items()}
            z = model.masked_features(raw, mods)  # every modality present: the features the fusion sees
            for s in subsets:
                logits = model.masked_logits(raw, s).float()  # the modalities outside s absent (Eq. 5)
                prob[s].append(logits.softmax(1).gather(1, y[:, None])[:, 0].double().cpu())
                correct[s].append((logits.argmax(1) == y).double().cpu())
            labels.append(y.cpu())
            for m in mods:
                feats[m].append(z[m].cpu())
    cat = lambda xs: torch.cat(xs).numpy()  # noqa: E731
    return SplitPass(cat(labels), np.asarray(rows), {m: cat(v) for m, v in feats.items()},
                     {s: cat(v) for s, v in prob.items()}, {s: cat(v) for s, v in correct.items()})
