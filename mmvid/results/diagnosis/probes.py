"""Linear probes: how much each encoder of the fused model learned. A softmax regression on the frozen features
of modality m (train split) is scored on held-out data, beside the same probe on the encoder of a run trained on
m alone for the same epochs and that run's own accuracy (the paper's "insufficiently learned" argument, its
Fig. 1(c), as a number)."""

from __future__ import annotations

import numpy as np
import torch


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 num_classes: int, l2: float = 1e-3, iters: int = 200) -> dict[str, float]:
    """Softmax regression on frozen features (standardised with train statistics), full-batch L-BFGS in
    float64 from zero weights: deterministic, so a probe is reproducible. Returns train and held-out accuracy."""
    x = torch.as_tensor(train_x, dtype=torch.float64)
    mu, sd = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mu) / sd
    xt = (torch.as_tensor(test_x, dtype=torch.float64) - mu) / sd
    y = torch.as_tensor(train_y, dtype=torch.long)
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        tr = float(((x @ w + b).argmax(1) == y).double().mean())
        te = float(((xt @ w + b).argmax(1) == torch.as_tensor(test_y)).double().mean())
    return {"train": tr, "test": te}
