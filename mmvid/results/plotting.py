"""What every figure of mmvid shares: matplotlib's Agg backend (headless), the sizes, and the writer.

Every figure is written as PNG and SVG (:func:`save_figure`). Figure sizes are fixed (``DPI`` x inches), so a
PNG is ``100 * figsize`` pixels. The lowest module of the figures: mmvid.results.figures (a run's figures),
mmvid.results.robustness (its plot) and mmvid.results.diagnosis.plots draw through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmvid.workspace import FIGURE_METADATA

DPI = 100
PANEL = (4.2, 3.6)  # inches per panel


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    # Imported here, not at the top: matplotlib takes a second to import, and the modules that draw are
    # imported by commands that may end before any figure (a bad option).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, stem: Path) -> list[Path]:
    """``stem.png`` and ``stem.svg``, marked as mmvid's (mmvid.workspace.FIGURE_METADATA: a later ``--out`` may
    replace them, and nothing else); closes the figure."""
    plt = pyplot()
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=DPI, metadata=FIGURE_METADATA[p.suffix])
    plt.close(fig)
    return paths


def class_colors(n: int) -> list:
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def present(xs: list[Any], values: list[float | None], scale: float = 1.0) -> tuple[list[Any], list[float]]:
    """The (x, scale * value) pairs that have a value, as two lists: val/test are logged every ``eval_every``
    epochs only, and a line drawn through the epochs that have them stays a line."""
    have = [(x, v) for x, v in zip(xs, values) if v is not None]
    return [x for x, _ in have], [scale * v for _, v in have]
