"""Benchmark of the methods on the demo data set (not a timed test): 3 seeds per configuration.

    python -m benchmarks.bench_methods [--workspace DIR] [--dataset demo|demo-shortcut] [--seeds 3] [--epochs N] [--jobs 2]
                                       [--only concat,concat+bmm,bmm-beta0.5]

Prepares the demo cache if needed (``mmvid prepare demo``), trains recipes/demo.yaml with each
configuration and prints mean +- std of the last-epoch test accuracy, of the test accuracy at the best
validation epoch, the final train-set imbalance factor rho (Eq. 6, s_audio / s_video), the final
masked (unimodal, Eq. 5) test accuracies, and for B-MM which modality it mixed in how many epochs
and with what mean lambda (Eq. 7). The paper's claim to test: B-MM beats concat and MM.

Runs go to ``<workspace>/runs/bench-[<dataset>-]<config>-s<seed>``; a finished run of the same config is reused, so
an interrupted benchmark continues where it stopped. ``--jobs`` trains that many runs at once, each
process with cpu_count / jobs intra-op threads (small models use two single-thread processes better
than one two-thread process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

CONFIGS = {
    "concat": {},
    "concat+mm": {"augment.name": "mm"},
    "concat+bmm": {"augment.name": "bmm"},
    "concat+ogm-ge": {"balance.name": "ogm-ge"},
    "concat+pmr": {"balance.name": "pmr"},
    "concat+gblend": {"balance.name": "gblend"},
    "sum": {"model.fusion": "sum"},  # OGM-GE's SumFusion, fc_a(z_a) + fc_v(z_v)
    "mmtm+greedy": {"model.fusion": "mmtm", "balance.name": "greedy"},
    "concat+msmix": {"augment.name": "msmix"},
}
# B-MM ablations (the paper's Tables 4 and 5, and METHODS.md's alternatives); run them with --only.
VARIANTS = {
    "bmm-beta0.5": {"augment.name": "bmm", "augment.args.beta": 0.5},
    "bmm-beta2-inside": {"augment.name": "bmm", "augment.args.beta": 2.0, "augment.args.lambda_map": "inside"},
    "bmm-warmup0": {"augment.name": "bmm", "augment.args.warmup": 0},
    "bmm-warmup4": {"augment.name": "bmm", "augment.args.warmup": 4},
    "bmm-rho-acc": {"augment.name": "bmm", "augment.args.rho_stat": "acc"},
    "bmm-rho-val": {"augment.name": "bmm", "augment.args.rho_split": "val"},  # an mmvid option, not the paper's
}


def mean_std(xs: list[float], scale: float = 100.0) -> str:
    return f"{scale * statistics.mean(xs):.2f} ± {scale * (statistics.stdev(xs) if len(xs) > 1 else 0.0):.2f}"


def run_one(name: str, overrides: dict, seed: int, epochs: int | None, cache: str, run: str, threads: int) -> dict:
    """Train one configuration (in a worker process) and read back what the table needs."""
    import torch

    from mmvid.config import resolve_config
    from mmvid.engine.loop import train

    torch.set_num_threads(threads)
    cfg = resolve_config("demo", {**overrides, "seed": seed, "epochs": epochs})
    done = Path(run) / "summary.json"
    if done.exists() and json.loads(done.read_text()).get("epochs") == cfg.epochs:
        s = json.loads(done.read_text())
    else:
        t0 = time.time()
        s = train(cfg, Path(cache), Path(run), progress=False)
        s["seconds"] = time.time() - t0
        done.write_text(json.dumps(s, indent=2, default=float))
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "test_acc" in r]
    mixed = {m: [r[f"lambda_{m}"] for r in rows if r.get(f"lambda_{m}", 0) > 0] for m in cfg.data.modalities}
    last = s["last"]
    return {"name": name, "seed": seed, "test_acc": last["test_acc"], "best_test": s["best"]["test_acc"],
            "rho": last["rho"], "seconds": s.get("seconds", 0.0),
            **{f"test_acc_{m}": last.get(f"test_acc_{m}") for m in cfg.data.modalities},
            **{f"mixed_epochs_{m}": len(v) for m, v in mixed.items()},
            **{f"mean_lambda_{m}": (sum(v) / len(v) if v else 0.0) for m, v in mixed.items()}}


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from mmvid.workflows import run_prepare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", default="mmvid-workspace")
    ap.add_argument("--dataset", default="demo", choices=["demo", "demo-shortcut"],
                    help="demo-shortcut: audio alone fits the training clips (a stronger imbalance; mmvid.data.sources.demo)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs trained at once")
    ap.add_argument("--only", default=None,
                    help="comma-separated subset of: " + ", ".join(CONFIGS) + "; B-MM ablations: " + ", ".join(VARIANTS))
    a = ap.parse_args()
    console = Console(width=max(Console().width, 150))  # the table has seven columns
    ws = Path(a.workspace).resolve()
    cache = run_prepare(console, ws, a.dataset, progress=False)
    prefix = "bench-" if a.dataset == "demo" else f"bench-{a.dataset}-"
    known = {**CONFIGS, **VARIANTS}
    names = a.only.split(",") if a.only else list(CONFIGS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown config {unknown}; choose from: {', '.join(known)}")
    threads = max(1, (os.cpu_count() or 1) // a.jobs)
    jobs = [(n, known[n], seed, a.epochs, str(cache), str(ws / "runs" / f"{prefix}{n}-s{seed}"), threads)
            for n in names for seed in range(a.seeds)]
    results: dict[str, list[dict]] = {n: [] for n in names}
    t0 = time.time()
    with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn")) as pool:
        for fut in as_completed([pool.submit(run_one, *j) for j in jobs]):
            r = fut.result()
            results[r["name"]].append(r)
            (ws / f"{prefix}methods.json").write_text(json.dumps(results, indent=2))  # partial results survive a stop
            console.print(f"{r['name']} seed {r['seed']}: test {100 * r['test_acc']:.1f}%  rho {r['rho']:.2f}  "
                          f"({r['seconds']:.0f}s; {time.time() - t0:.0f}s elapsed)")
    mods = ("audio", "video")
    table = Table(title=f"{a.dataset}, {a.seeds} seeds, recipe demo, mean ± std ({time.time() - t0:.0f}s)")
    for col in ("method", "test % (last)", "test % (best val)", "final rho (train)",
                "audio-only test %", "video-only test %", "B-MM mixed: epochs (mean λ)"):
        table.add_column(col)
    for name, rs in results.items():
        rs.sort(key=lambda r: r["seed"])
        mix = ", ".join(f"{m} {statistics.mean(r[f'mixed_epochs_{m}'] for r in rs):.1f} "
                        f"({statistics.mean(r[f'mean_lambda_{m}'] for r in rs):.2f})"
                        for m in mods if any(r[f"mixed_epochs_{m}"] for r in rs)) or "-"
        table.add_row(name, mean_std([r["test_acc"] for r in rs]), mean_std([r["best_test"] for r in rs]),
                      mean_std([r["rho"] for r in rs], 1.0), mean_std([r["test_acc_audio"] for r in rs]),
                      mean_std([r["test_acc_video"] for r in rs]), mix)
    console.print(table)


if __name__ == "__main__":
    main()
