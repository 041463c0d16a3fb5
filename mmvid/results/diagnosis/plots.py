"""The figures of a diagnosis, each PNG + SVG: the Shapley value per class, the probes, memorisation and rho
with the utilisation over the epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mmvid.results.diagnosis.passes import SPLITS
from mmvid.results.plotting import PANEL, present, pyplot, save_figure


def plot_diagnosis(data: dict[str, Any], out: Path) -> list[Path]:
    """shapley_per_class, probes, memorisation and rho (PNG + SVG each, in ``out``); returns the PNGs."""
    return [plot_shapley_per_class(data, out / "shapley_per_class"), plot_probes(data, out / "probes"),
            plot_memorisation(data, out / "memorisation"), plot_rho(data, out / "rho")]


def plot_shapley_per_class(data: dict[str, Any], stem: Path) -> Path:
    """The mean Shapley value of each modality per class, train split and held out side by side."""
    plt = pyplot()
    mods, names = data["modalities"], data["class_names"]
    fig, axes = plt.subplots(1, 2, figsize=(max(PANEL[0] * 2, 0.5 * len(names) * len(mods) + 3), PANEL[1] + 0.8),
                             layout="constrained", sharey=True)
    width = 0.8 / len(mods)
    for ax, split in zip(axes, SPLITS):
        pc = data["shapley"][split]["per_class"]
        cls = [c for c in names if c in pc]
        x = np.arange(len(cls))
        for i, m in enumerate(mods):
            ax.bar(x + (i - (len(mods) - 1) / 2) * width, [pc[c][m] for c in cls], width, label=m, color=f"C{i}")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(x, cls, rotation=45 if len(cls) > 6 else 0, ha="right" if len(cls) > 6 else "center", fontsize=7)
        ax.set(title=f"Shapley value per class, {split}", ylabel="mean phi (true-class probability)")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    return save_figure(fig, stem)[0]


def plot_probes(data: dict[str, Any], stem: Path) -> Path:
    """Held-out accuracy of a linear probe on each modality's encoder (fused run, alone run) and of the alone run."""
    plt = pyplot()
    mods = data["modalities"]
    fig, ax = plt.subplots(figsize=PANEL, layout="constrained")
    kinds = [("fused_encoder", "probe: fused run's encoder"), ("alone_encoder", "probe: alone run's encoder"),
             ("alone_run", "alone run")]
    kinds = [k for k in kinds if all(k[0] in data["probes"][m] for m in mods)]
    x = np.arange(len(mods))
    w = 0.8 / len(kinds)
    for i, (k, label) in enumerate(kinds):
        ax.bar(x + (i - (len(kinds) - 1) / 2) * w, [100 * data["probes"][m][k]["test"] for m in mods], w, label=label,
               color=f"C{i + 2}")
    ax.set_xticks(x, mods)
    ax.set(title="held-out accuracy of each modality", ylabel="accuracy (%)", ylim=(0, 100))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, stem)[0]


def _curves_panels(data: dict[str, Any]):
    """What the two curve figures share: the modalities, the curves over epochs (``curves`` of diagnosis.json),
    the held-out split's name, the epochs, and a figure of two panels side by side."""
    c = data.get("curves") or {}
    fig, axes = pyplot().subplots(1, 2, figsize=(PANEL[0] * 2, PANEL[1]), layout="constrained")
    return data["modalities"], c, c.get("held_out", "test"), c.get("epoch", []), fig, axes


def plot_memorisation(data: dict[str, Any], stem: Path) -> Path:
    """Each modality alone (masking) on train and held out over the epochs, and their gap."""
    mods, c, held, ep, fig, axes = _curves_panels(data)
    for i, m in enumerate(mods):
        axes[0].plot(*present(ep, c.get(f"train_acc_{m}", []), 100), "--", color=f"C{i}", label=f"{m}, train")
        axes[0].plot(*present(ep, c.get(f"{held}_acc_{m}", []), 100), "-", color=f"C{i}", label=f"{m}, {held}")
        axes[1].plot(*present(ep, c.get(f"gap_{m}", []), 100), "-", color=f"C{i}", label=m)
    axes[0].set(title="each modality alone (masking, Eq. 5)", xlabel="epoch", ylabel="accuracy (%)")
    axes[1].set(title=f"memorisation: train minus {held}", xlabel="epoch", ylabel="points")
    axes[1].axhline(0, color="k", lw=0.6)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, stem)[0]


def plot_rho(data: dict[str, Any], stem: Path) -> Path:
    """rho (Eq. 6) on train and held out over the epochs (log axis), and the bounded utilisation of each modality."""
    from matplotlib.ticker import FuncFormatter  # matplotlib when drawing (mmvid.results.plotting)

    mods, c, held, ep, fig, axes = _curves_panels(data)
    for key, style, label in (("train_rho", "-", "train"), (f"{held}_rho", ":", held)):
        vals = c.get(key, [])
        if vals:
            axes[0].plot(*present(ep, vals), style, color="k", label=f"rho, {label}")
    axes[0].axhline(1, color="grey", lw=0.6)
    axes[0].set(title="imbalance factor rho (Eq. 6)", xlabel="epoch", yscale="log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    axes[0].yaxis.set_major_formatter(plain)
    axes[0].yaxis.set_minor_formatter(plain)
    for i, m in enumerate(mods):
        for split, style in (("train", "--"), (held, "-")):
            vals = c.get(f"{split}_utilisation_{m}")
            if vals:
                axes[1].plot(*present(ep, vals), style, color=f"C{i}", label=f"{m}, {split}")
    axes[1].set(title="conditional utilisation (bounded)", xlabel="epoch", ylim=(-1.05, 1.05))
    axes[1].axhline(0, color="k", lw=0.6)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, stem)[0]
