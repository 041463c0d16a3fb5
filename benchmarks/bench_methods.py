"""Benchmark of the methods on the demo data set (not a timed test): 3 seeds per configuration.

    python -m benchmarks.bench_methods [--workspace DIR] [--seeds 3] [--epochs N] [--only concat,concat+bmm]

Prepares the demo cache if needed (``mmvid prepare demo``), trains recipes/demo.yaml with each
configuration and prints mean +- std of the last-epoch test accuracy, of the test accuracy at the best
validation epoch, and the final train-set imbalance factor rho (Eq. 6, s_audio / s_video).
The paper's claim to test: B-MM beats concat and MM.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

CONFIGS = {
    "concat": {},
    "concat+mm": {"augment.name": "mm"},
    "concat+bmm": {"augment.name": "bmm"},
    "concat+ogm-ge": {"balance.name": "ogm-ge"},
    "concat+pmr": {"balance.name": "pmr"},
    "concat+gblend": {"balance.name": "gblend"},
}


def mean_std(xs: list[float]) -> str:
    return f"{100 * statistics.mean(xs):.2f} ± {100 * (statistics.stdev(xs) if len(xs) > 1 else 0.0):.2f}"


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from mmvid.config import resolve_config
    from mmvid.engine import train
    from mmvid.workflows import run_prepare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", default="mmvid-workspace")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated subset of: " + ", ".join(CONFIGS))
    a = ap.parse_args()
    console = Console()
    ws = Path(a.workspace).resolve()
    cache = run_prepare(console, ws, "demo", progress=False)
    names = a.only.split(",") if a.only else list(CONFIGS)
    results: dict[str, list[dict]] = {}
    t0 = time.time()
    for name in names:
        for seed in range(a.seeds):
            cfg = resolve_config("demo", {**CONFIGS[name], "seed": seed, "epochs": a.epochs})
            run = ws / "runs" / f"bench-{name}-s{seed}"
            done = run / "summary.json"
            # A finished run of the same config is reused, so an interrupted benchmark continues where it stopped.
            if done.exists() and json.loads(done.read_text()).get("epochs") == cfg.epochs:
                s = json.loads(done.read_text())
            else:
                s = train(cfg, cache, run, progress=False)
            results.setdefault(name, []).append({"test_acc": s["last"]["test_acc"], "best_test": s["best"]["test_acc"],
                                                 "rho": s["last"]["rho"], "seconds": time.time() - t0})
            (ws / "bench_methods.json").write_text(json.dumps(results, indent=2))  # partial results survive a stop
            console.print(f"{name} seed {seed}: test {100 * s['last']['test_acc']:.1f}%  rho {s['last']['rho']:.2f}  "
                          f"({time.time() - t0:.0f}s)")
    table = Table(title=f"demo, {a.seeds} seeds, recipe demo ({time.time() - t0:.0f}s)")
    for col in ("method", "test acc % (last)", "test acc % (best val)", "final rho (train)"):
        table.add_column(col)
    for name, rs in results.items():
        rhos = [r["rho"] for r in rs]
        table.add_row(name, mean_std([r["test_acc"] for r in rs]), mean_std([r["best_test"] for r in rs]),
                      f"{statistics.mean(rhos):.2f} ± {statistics.stdev(rhos) if len(rhos) > 1 else 0.0:.2f}")
    console.print(table)
    (ws / "bench_methods.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
