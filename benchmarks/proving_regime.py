"""The regime check of the proving ground (not a timed test): the paper's Fig. 1 figures of trained runs.

    python -m benchmarks.proving_regime RUN [RUN ...] [--strong audio --weak video]

Reads each run folder's metrics.jsonl (:func:`mmvid.results.evaluation.regime`) and prints, per run and as the
mean over the runs: the strong and weak modality's masked (Eq. 5) train and test accuracy at the last
epoch and their gaps, the fused test accuracy, the lowest train-set rho (Eq. 6) over the epochs, and
whether the regime holds (strong gap >= 30 points, weak gap <= 10, rho > 1 at every epoch, fused test
above the strong modality alone). Train the runs first, e.g. ``mmvid prepare proving --workers 2`` and
``mmvid train --recipe proving --seed S`` for a few seeds.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from mmvid.results.evaluation import regime


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--strong", default="audio")
    ap.add_argument("--weak", default="video")
    args = ap.parse_args(argv)
    figures = [regime(run, args.strong, args.weak) for run in args.runs]
    for run, r in zip(args.runs, figures):
        print(f"{run.name}: {r.line()}")
    if len(figures) > 1:
        mean = {k: 100 * statistics.mean(getattr(r, k) for r in figures)
                for k in ("strong_train", "strong_test", "weak_train", "weak_test", "fused_test")}
        print(f"mean of {len(figures)}: {args.strong} train {mean['strong_train']:.1f} test {mean['strong_test']:.1f}; "
              f"{args.weak} train {mean['weak_train']:.1f} test {mean['weak_test']:.1f}; fused test {mean['fused_test']:.1f}; "
              f"regime holds in {sum(r.holds() for r in figures)} of {len(figures)} runs")


if __name__ == "__main__":
    main()
