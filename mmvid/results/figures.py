"""Figures through matplotlib's Agg backend (headless), each written as PNG and SVG:

* ``curves``: fused and per-modality (masking, Eq. 5) train/test accuracy over epochs (paper
  Fig. 1), the imbalance factor rho (Eq. 6) and B-MM's mixing ratios lambda (Eq. 7);
* ``umap``: UMAP of the audio, video (flow) and fused features on train and test, coloured by
  class, a panel per modality x split (paper Figs. 4-5);
* ``confusion``: row-normalised confusion matrices of the fused model and of each modality alone.

Every function returns the paths it wrote (sizes and format: mmvid.results.plotting). The robustness plot is
mmvid.results.robustness.plot_robustness.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmvid.config import MODALITIES
from mmvid.engine.evaluation import evaluate_model
from mmvid.errors import MmvidError
from mmvid.results.evaluation import checkpoint_note, evaluate_run, load_run, method_label
from mmvid.results.plotting import PANEL, class_colors, present, pyplot, save_figure
from mmvid.runfiles import check_run, read_config, read_metrics

# ----------------------------------------------------------------------------- curves (Fig. 1)


def _series(recs: list[dict], key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    return present([r["epoch"] + 1 for r in recs], [r.get(key) for r in recs], scale)


def plot_curves(run: Path, out: Path | None = None) -> list[Path]:
    """Panels: accuracy (fused black, modalities coloured; train dashed, test solid), rho on a log
    axis (train monitor and test), and, when the run logged them, the mixing ratios lambda_m."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator  # matplotlib when drawing (mmvid.results.plotting)

    check_run(run)  # every small file of the run, before any figure
    recs = read_metrics(run)
    cfg = read_config(run).to_dict() if (run / "config.yaml").exists() else None
    plt = pyplot()
    keys = set().union(*recs)
    logged = {k.split("_acc_", 1)[1] for k in keys if "_acc_" in k} & set(MODALITIES)
    mods = [m for m in (cfg["data"]["modalities"] if cfg else sorted(logged)) if m in logged]
    lam_keys = sorted(k for k in keys if k.startswith("lambda_"))
    n = 3 if lam_keys else 2
    fig, axes = plt.subplots(1, n, figsize=(PANEL[0] * n, PANEL[1] + 0.4), layout="constrained")
    ax = axes[0]
    for split, style in (("train", "--"), ("test", "-")):
        if f"{split}_acc" in keys:
            ax.plot(*_series(recs, f"{split}_acc", 100), style, color="k", lw=2, label=f"fused, {split}")
        for i, m in enumerate(mods):
            if f"{split}_acc_{m}" in keys:
                ax.plot(*_series(recs, f"{split}_acc_{m}", 100), style, color=f"C{i}",
                        label=f"{m} alone, {split}")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy (alone = masking, Eq. 5)", ylim=(0, 101))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best", framealpha=0.7)
    ax = axes[1]
    for key, style, label in (("rho", "-", "rho, train (monitor)"), ("test_rho", ":", "rho, test")):
        if key in keys:
            ax.plot(*_series(recs, key), style, color="k", marker="o", ms=3, label=label)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_yscale("log")  # rho and 1 / rho are the same imbalance: symmetric around 1 on a log axis
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ylabel = f"rho = s_{mods[0]} / s_{mods[1]}" if len(mods) == 2 else "rho = max_m rho_m / min_m rho_m"
    ax.set(xlabel="epoch", ylabel=ylabel + "  (log)", title="imbalance factor rho (Eq. 6)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if lam_keys:
        ax = axes[2]
        for i, m in enumerate(mods):
            if f"lambda_{m}" in keys:
                ax.plot(*_series(recs, f"lambda_{m}"), color=f"C{i}", marker="o", ms=3, label=f"lambda {m}")
        ax.set(xlabel="epoch", ylabel="lambda", title="B-MM mixing ratios (Eq. 7)", ylim=(-0.02, 1.0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{run.name}  ({method_label(cfg)})" if cfg else run.name)
    return save_figure(fig, out or run / "figures" / "curves")


# ----------------------------------------------------------------------------- UMAP (Figs. 4-5)


def subsample(labels: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Positions of at most ``max_points`` items, about equally many per class (seeded)."""
    if len(labels) <= max_points:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = max(1, max_points // len(classes))
    picked = [rng.permutation(np.flatnonzero(labels == c))[:per] for c in classes]
    return np.sort(np.concatenate(picked))[:max_points]


def embed_2d(x: np.ndarray, seed: int, n_neighbors: int = 15) -> np.ndarray:
    """UMAP to 2-D (N, 2); ``n_neighbors`` is capped for tiny samples."""
    import umap  # imported when used: umap and numba take seconds to import

    if len(x) < 4:
        raise MmvidError(f"UMAP needs at least 4 clips, got {len(x)}; raise --max-points or use a larger split")
    # numba's OpenMP threading layer, started by UMAP, sets the OpenMP thread count of the process to all
    # cores, and PyTorch shares that OpenMP runtime: a model trained afterwards in the same process ran
    # with other threads than asked (OMP_NUM_THREADS, torch.set_num_threads) and other last bits.
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # umap warns that random_state forces one thread; that is the point
            return umap.UMAP(n_neighbors=min(n_neighbors, len(x) - 1), random_state=seed, n_jobs=1,
                             init="spectral" if len(x) > 20 else "random").fit_transform(x)
    finally:
        torch.set_num_threads(threads)


def umap_features(run: Path, splits: tuple[str, ...] = ("train", "test"), max_points: int = 500, seed: int = 0,
                  device: str = "auto", cache: str | Path | None = None, console=None) -> dict[str, Any]:
    """Per split: labels, per-head accuracy, and 2-D UMAP embeddings of each modality's feature and of
    the fused feature h (features as the head sees them: per-modality z_m and h = fuse(z)). ``console``:
    where to name the cache read (once)."""
    out: dict[str, Any] = {"splits": {}}
    for split in splits:
        lr = load_run(run, split, device, cache)
        with_labels = lr.info.labels[lr.rows]
        rows = lr.rows[subsample(with_labels, max_points, seed)]
        res = evaluate_model(lr.model, lr.loader(rows), lr.device, keep=True, keep_features=True)
        heads = [*lr.model.modalities, "fused"]
        acc = {m: res.modality_acc(m) for m in lr.model.modalities} | {"fused": res.acc}
        out["splits"][split] = {"labels": res.labels, "acc": acc,
                                "embedding": {h: embed_2d(res.features[h], seed) for h in heads}}
        out.update(heads=heads, class_names=lr.info.class_names, method=lr.label, run=lr.run, checkpoint=lr.note)
    if console is not None:
        console.print(lr.cache.line(lr.run), soft_wrap=True, highlight=False)
    return out


def plot_umap(run: Path, splits: tuple[str, ...] = ("train", "test"), max_points: int = 500, seed: int = 0,
              device: str = "auto", cache: str | Path | None = None, out: Path | None = None,
              console=None) -> list[Path]:
    """One figure, rows = splits, columns = modality features + fused; points coloured by class.
    Titles give the head's accuracy on the plotted clips and the silhouette of the classes in 2-D."""
    from sklearn.metrics import silhouette_score  # imported when used: scikit-learn is slow to import

    plt = pyplot()
    data = umap_features(run, splits, max_points, seed, device, cache, console)
    heads, names = data["heads"], data["class_names"]
    colors = class_colors(len(names))
    nr, nc = len(splits), len(heads)
    fig, axes = plt.subplots(nr, nc, figsize=(PANEL[0] * nc, PANEL[1] * nr + 0.9), layout="constrained", squeeze=False)
    for i, split in enumerate(splits):
        d = data["splits"][split]
        y = d["labels"]
        for j, h in enumerate(heads):
            ax = axes[i, j]
            e = d["embedding"][h]
            ax.scatter(e[:, 0], e[:, 1], c=[colors[k] for k in y], s=9 if len(y) > 300 else 22, alpha=0.8, linewidths=0)
            sil = silhouette_score(e, y) if 1 < len(np.unique(y)) < len(y) else float("nan")
            what = "fused feature h" if h == "fused" else f"{h} feature z_{h}"
            ax.set_title(f"{what}, {split} (n={len(y)})\nacc {100 * d['acc'][h]:.1f}%, silhouette {sil:.2f}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[k], label=n) for k, n in enumerate(names)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(names), 10), fontsize=9, frameon=False)
    fig.suptitle(f"UMAP of features: {data['run'].name} ({data['method']}, {data['checkpoint']})")
    return save_figure(fig, out or data["run"] / "figures" / "umap")


# ----------------------------------------------------------------------------- confusion


def plot_confusion(run: Path, split: str = "test", device: str = "auto", cache: str | Path | None = None,
                   out: Path | None = None, result: dict[str, Any] | None = None, console=None) -> list[Path]:
    """Row-normalised confusion matrices (rows true, columns predicted): the fused model and each
    modality alone by masking (Eq. 5), a panel each; cells show the row percentage."""
    plt = pyplot()
    r = result or evaluate_run(Path(run), split, device, cache, console=console)
    names = r["class_names"]
    mats = {"fused": np.asarray(r["confusion"])} | {m: np.asarray(v) for m, v in r["modality_confusion"].items()}
    accs = {"fused": r["accuracy"]} | r["modality_accuracy"]
    k = len(names)
    side = max(PANEL[0], 0.45 * k + 1.5)
    fig, axes = plt.subplots(1, len(mats), figsize=(side * len(mats), side + 0.6), layout="constrained", squeeze=False)
    for ax, (head, cm) in zip(axes[0], mats.items()):
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    if cm[i, j]:
                        ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=7,
                                color="white" if norm[i, j] > 0.5 else "black")
        ticks = np.arange(k) if k <= 40 else np.arange(0, k, math.ceil(k / 40))
        ax.set_xticks(ticks, [names[t] for t in ticks], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(ticks, [names[t] for t in ticks], fontsize=8)
        title = "fused model" if head == "fused" else f"{head} alone (masking)"
        ax.set(title=f"{title}: acc {100 * accs[head]:.1f}%", xlabel="predicted", ylabel="true")
    fig.suptitle(f"confusion, % of each true class: {Path(r['run']).name} ({r['method']}, {r['split']}, n={r['n']}, "
                 f"{checkpoint_note(r)})")
    return save_figure(fig, out or Path(r["run"]) / "figures" / f"confusion_{split}")
