"""The proving ground (not a timed test): the paper's Tables 1 and 2 on a data set in the paper's regime, on CPU.

    python -m benchmarks.bench_proving [--workspace DIR] [--seeds 5] [--jobs 2] [--only concat,concat-bmm] [--zoo]

1. ``mmvid prepare proving`` (generated once: 2,000 real mp4 clips; :mod:`mmvid.data.sources.proving`);
2. ``mmvid sweep recipes/proving-ground --seeds N --baseline concat``: every row of recipes/proving-ground at
   every seed (finished runs are reused, so an interrupted benchmark continues), the table with mean ± std,
   95 % intervals and each row's paired difference to concat; ``--zoo`` adds recipes/zoo/proving, every
   balancing method of mmvid (its rows of the same config as a Table 2 row share that row's runs);
3. the regime check of every run (:func:`mmvid.results.evaluation.regime`): per row, the mean over seeds of audio's and
   video's masked train and test accuracy at the last epoch, the fused test accuracy, the lowest train-set
   rho, and in how many runs the regime holds. Written to ``<workspace>/sweeps/<sweep>/regime.md`` too.

The regime check of the concat runs decides whether the data set is right, whatever the methods do.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def regime_table(ws: Path, out: Path) -> list[str]:
    """Markdown lines: the regime figures of every cell of a finished sweep, mean over its seeds."""
    from mmvid.errors import MmvidError
    from mmvid.results.evaluation import regime

    plan = json.loads((out / "sweep.json").read_text())
    rows: dict[tuple[str, str], list] = {}
    for cell in plan["cells"]:
        run = ws / "runs" / cell["run"]
        if (run / "summary.json").exists():
            try:
                rows.setdefault((cell["table"], cell["row"]), []).append(regime(run))
            except MmvidError:  # a run without the per-modality train monitor: no regime figures
                rows.setdefault((cell["table"], cell["row"]), [])
    lines = ["| table | row | runs | audio train / test % | video train / test % | fused test % | min train ρ | regime holds |",
             "|---|---|---|---|---|---|---|---|"]
    for (table, row), rs in rows.items():
        if not rs:
            lines.append(f"| {table} | {row} | 0 | | | | | |")
            continue
        m = {k: 100 * statistics.mean(getattr(r, k) for r in rs)
             for k in ("strong_train", "strong_test", "weak_train", "weak_test", "fused_test")}
        lines.append(f"| {table} | {row} | {len(rs)} | {m['strong_train']:.1f} / {m['strong_test']:.1f} | "
                     f"{m['weak_train']:.1f} / {m['weak_test']:.1f} | {m['fused_test']:.1f} | "
                     f"{min(r.rho_min for r in rs):.2f} | {sum(r.holds() for r in rs)} of {len(rs)} |")
    return lines


def main() -> None:
    from rich.console import Console

    from mmvid.sweeps.command import sweep_command
    from mmvid.sweeps.plan import plan_sweep
    from mmvid.workflows import run_prepare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", default="mmvid-workspace")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs trained at once")
    ap.add_argument("--only", default=None, help="comma-separated recipe names of recipes/proving-ground")
    ap.add_argument("--zoo", action="store_true", help="also every method of recipes/zoo/proving (issue 13's table)")
    a = ap.parse_args()
    console = Console(width=max(Console().width, 150))
    ws = Path(a.workspace).resolve()
    t0 = time.time()
    run_prepare(console, ws, "proving", workers=a.jobs)
    t_prepare = time.time() - t0
    target = ["recipes/proving-ground"] + (["recipes/zoo/proving"] if a.zoo else [])
    sweep_command(console, ws, target, seeds=a.seeds, jobs=a.jobs, only=a.only, baseline="concat")
    out = ws / "sweeps" / plan_sweep(target, seeds=a.seeds, only=a.only).name
    lines = regime_table(ws, out)
    text = "\n".join([f"# Regime check, {a.seeds} seeds (prepare {t_prepare:.0f} s, total {time.time() - t0:.0f} s)", "",
                      *lines]) + "\n"
    (out / "regime.md").write_text(text)
    console.print(text, markup=False, highlight=False)
    console.print(f"wrote {out / 'regime.md'}")


if __name__ == "__main__":
    main()
