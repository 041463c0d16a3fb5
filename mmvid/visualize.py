"""Figures through matplotlib's Agg backend (headless): the imbalance curves of paper Fig. 1."""

from __future__ import annotations

import json
from pathlib import Path

from mmvid.errors import MmvidError


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        raise MmvidError(f"{run} has no metrics.jsonl; train the run first")
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def plot_curves(run: Path, out: Path | None = None) -> Path:
    """Train/test accuracy of the fused model and of each modality (masking) over epochs, and rho."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(run)
    epochs = [r["epoch"] + 1 for r in recs]
    mods = [k[len("test_acc_"):] for k in recs[0] if k.startswith("test_acc_")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for split, style in (("train", "--"), ("test", "-")):
        if f"{split}_acc" in recs[0]:
            axes[0].plot(epochs, [r[f"{split}_acc"] for r in recs], style, color="k", label=f"fused {split}")
        for i, m in enumerate(mods):
            key = f"{split}_acc_{m}"
            if key in recs[0]:
                axes[0].plot(epochs, [r[key] for r in recs], style, color=f"C{i}", label=f"{m} {split}")
    axes[0].set(xlabel="epoch", ylabel="accuracy", title="accuracy (modality alone = masking, Eq. 5)")
    axes[0].legend(fontsize=8)
    if "rho" in recs[0]:
        axes[1].plot(epochs, [r["rho"] for r in recs], color="k", label="rho (train)")
    for i, m in enumerate(mods):
        if f"lambda_{m}" in recs[0]:
            axes[1].plot(epochs, [r[f"lambda_{m}"] for r in recs], color=f"C{i}", label=f"lambda {m}")
    axes[1].axhline(1.0, color="grey", lw=0.5)
    axes[1].set(xlabel="epoch", title="imbalance factor rho and mixing ratios")
    axes[1].legend(fontsize=8)
    fig.suptitle(run.name)
    fig.tight_layout()
    out = out or run / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
