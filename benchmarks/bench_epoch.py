"""What a whole training epoch costs next to the compute limit of its steps (issue 15, section 5).

For each setting it trains the demo recipe through :func:`mmvid.engine.loop.train` (the real loop: loader,
steps, evaluation, checkpoints) and reads each epoch's ``seconds`` and ``eval_seconds`` from metrics.jsonl;
the compute limit is the same training step fed one batch already on the device
(:func:`benchmarks.bench_throughput.samples_per_second`), times the epoch's train clips. Settings run
interleaved, ``--rounds`` times; figures are medians over rounds of the mean over epochs 2..E-1 (the first
warms up; the last is always evaluated): with the default 7 epochs and ``eval_every`` 5, that is one
evaluated epoch in five, as in a long run. ``evaluation / epoch`` (eval_seconds over seconds of the same
epochs) does not depend on the compute-limit measurement, the figure to trust on a loaded machine.
Not a test: run it by hand:

    python -m benchmarks.bench_epoch                          # concat and B-MM, before/after settings
    python -m benchmarks.bench_epoch --rounds 3 --json epoch.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

# (label, config overrides): the defaults (monitor over the whole train set, val/test every epoch), then the
# options of issue 15 that each method may take (B-MM keeps its full train-set pass: monitor_plan).
SETTINGS = [
    ("concat", {}),
    ("concat, monitor_train 0.1", {"monitor_train": 0.1}),
    ("concat, monitor_train 0", {"monitor_train": 0}),
    ("concat, monitor_train 0, eval_every 5", {"monitor_train": 0, "eval_every": 5}),
    ("B-MM", {"augment.name": "bmm"}),
    ("B-MM, eval_every 5", {"augment.name": "bmm", "eval_every": 5}),
]


def compute_limit(cfg, info, run_dir: Path, steps: int, warmup: int) -> float:
    """Samples/s of the training step on one batch already on the device."""
    from benchmarks.bench_throughput import fixed_batch, samples_per_second
    from mmvid.engine.loop import build_training

    parts = build_training(cfg, info, run_dir)
    return samples_per_second(parts, fixed_batch(parts, cfg, info), steps, warmup)


def one_run(ws: Path, over: dict, name: str) -> list[dict]:
    from rich.console import Console

    from mmvid.workflows import run_train

    run = run_train(Console(quiet=True), ws, "demo", {**over, "run_name": name}, progress=False)
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, help="an existing demo-like cache (default: `mmvid prepare demo` in a temporary workspace)")
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=30, help="steps timed for the compute limit")
    p.add_argument("--only", help="which SETTINGS to run: their numbers from 1, comma-separated (e.g. 1,3,5)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.epochs < 3:
        p.error("--epochs must be at least 3: the first (warm-up) and the last (always evaluated) are not averaged")

    from rich.console import Console

    from mmvid.config import resolve_config
    from mmvid.data.cache import read_info
    from mmvid.engine.loaders import make_splits
    from mmvid.plugins import load_plugins
    from mmvid.workflows import run_prepare

    load_plugins()
    settings = [s for i, s in enumerate(SETTINGS, 1) if not args.only or str(i) in args.only.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        cache = args.cache or run_prepare(Console(quiet=True), ws, "demo", progress=False)
        if args.cache:
            (ws / "caches").mkdir()
            (ws / "caches" / cache.name).symlink_to(cache.resolve())
        info = read_info(cache)
        base = {"data.dataset": cache.stem, "device": args.device, "epochs": args.epochs}
        n_train = len(make_splits(info, resolve_config("demo", base).data.val_fraction, 0).train)
        per: dict[str, dict[str, list[float]]] = {label: {"epoch": [], "eval": [], "limit": []} for label, _ in settings}
        for r in range(args.rounds):
            for i, (label, over) in enumerate(settings):
                cfg = resolve_config("demo", {**base, **over})
                rate = compute_limit(cfg, info, ws / f"limit-{r}-{i}", args.steps, 3)
                recs = one_run(ws, {**base, **over}, f"r{r}-{i}")[1:-1]
                limit = n_train / rate  # seconds of the epoch's steps at the compute limit
                per[label]["limit"].append(limit)
                per[label]["epoch"].append(statistics.mean(x["seconds"] for x in recs) / limit)
                per[label]["eval"].append(statistics.mean(x["eval_seconds"] for x in recs) / limit)
        # The compute limit does not depend on what is evaluated: pool every measurement of a method's step
        # (a loaded machine swings one 10-step measurement by several times).
        method = {label: resolve_config("demo", {**base, **over}).augment.name for label, over in settings}
        pooled = {m: statistics.median(x for label in per if method[label] == m for x in per[label]["limit"])
                  for m in set(method.values())}
        rows = {}
        for label, d in per.items():
            scale = [lim / pooled[method[label]] for lim in d["limit"]]  # back to seconds, then over the pooled limit
            rows[label] = {"epoch": statistics.median(e * k for e, k in zip(d["epoch"], scale)),
                           "eval": statistics.median(e * k for e, k in zip(d["eval"], scale)),
                           "share": statistics.median(v / e for v, e in zip(d["eval"], d["epoch"])),
                           "limit": pooled[method[label]]}
    report = {"device": f"{args.device} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)", "torch": torch.__version__,
              "epochs": args.epochs, "rounds": args.rounds, "train_clips": n_train, "settings": dict(settings),
              "figures": rows, "when": time.strftime("%Y-%m-%d %H:%M")}
    _print(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def _print(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"demo epoch vs the compute limit of its steps, {report['device']}, {report['train_clips']} train "
                        f"clips, epochs 2-{report['epochs'] - 1}, median of {report['rounds']} rounds")
    for col in ("setting", "epoch / limit", "evaluation / limit", "rest (loop) / limit", "evaluation / epoch", "limit s"):
        table.add_column(col, justify="right")
    for label, r in report["figures"].items():
        table.add_row(label, f"{r['epoch']:.2f}", f"{r['eval']:.2f}", f"{r['epoch'] - r['eval']:.2f}", f"{r['share']:.2f}",
                      f"{r['limit']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
