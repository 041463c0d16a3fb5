"""Throughput of the real training step (:func:`mmvid.engine.step.train_step`: ResNet-18 branches, the
recipe's augmentation, AMP where available), measured in one run:

* fed from the cache through the training input pipeline (DataLoader with workers and pinned memory,
  or ``--cache-on-gpu``), against the same step fed from one batch already on the device (the
  compute limit), and their ratio (goal on a GPU: >= 0.9). The two alternate, ``--rounds`` times
  (the order swaps every round, so neither always runs second on a machine that heats up or gets
  busier), each ``--steps`` steps; the medians are reported. The cache-fed side first drains the
  batches its workers prefetched while the other side ran;
* the speed-up of AMP over fp32 (compute-limited);
* the speed-up of N processes (DDP, cache-fed) over 1.

Not a test: run it by hand, once per machine:

    python -m benchmarks.bench_throughput                      # CREMA-D shapes: 3 x 224^2 frames, 3 s audio
    python -m benchmarks.bench_throughput --cache ws/caches/cremad.h5 --batch-size 64 --workers 8
    python -m benchmarks.bench_throughput --image-size 112 --batch-size 8 --steps 10 --rounds 3   # a small CPU run

Without ``--cache`` it prepares the embedded demo at the given image size with CREMA-D's audio
parameters (real mp4 files decoded through the normal path) in a temporary workspace.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mmvid.config import resolve_config
from mmvid.data.cache import read_info
from mmvid.distributed.collectives import ResumableSampler
from mmvid.distributed.launch import backend_for, free_port, init_group, limit_threads
from mmvid.engine.loaders import make_loader, to_device
from mmvid.engine.loop import build_training
from mmvid.engine.step import train_step
from mmvid.plugins import load_plugins

CREMAD_AUDIO = {"sample_rate": 22050, "clip_seconds": 3.0, "n_fft": 512, "hop": 353}


def make_cfg(args: argparse.Namespace, amp: str, cache: Path):
    return resolve_config("cremad", {"data.dataset": cache.stem, "device": args.device, "amp": amp,
                                     "data.batch_size": args.batch_size, "data.workers": args.workers,
                                     "data.cache_on_gpu": args.cache_on_gpu, "model.encoder": args.encoder,
                                     "channels_last": args.channels_last, "compile": args.compile,
                                     "data.val_fraction": 0.0})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def samples_per_second(parts, batches, steps: int, warmup: int) -> float:
    """Run ``warmup`` then ``steps`` training steps on ``batches`` (an endless iterator); samples/s."""
    device = parts.ctx.device
    for _ in range(warmup):
        train_step(parts, *next(batches))
    _sync(device)
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        _, _, y = train_step(parts, *next(batches))
        n += len(y)
    _sync(device)
    return n / (time.perf_counter() - t0)


def cache_batches(parts, cfg, info, rank: int = 0, world_size: int = 1):
    """Endless training batches from the cache, as the training loop gets them."""
    sampler = ResumableSampler(len(parts.ctx.splits.train), world_size, rank, cfg.seed)
    loader = make_loader(info, parts.ctx.splits.train, cfg, train=True, sampler=sampler, device=parts.ctx.device)
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        yield from loader


def fixed_batch(parts, cfg, info):
    """One batch already on the device, served again and again: the compute limit."""
    inputs, y = next(cache_batches(parts, cfg, info))
    inputs, y = to_device(inputs, parts.ctx.device), y.to(parts.ctx.device)
    return itertools.repeat((inputs, y))


def _ddp_worker(rank: int, world: int, port: int, args_dict: dict, cache: str, amp: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    args = argparse.Namespace(**args_dict)
    cfg = make_cfg(args, amp, Path(cache))
    limit_threads(world)
    init_group(backend_for(cfg.device), rank, world, rank)
    load_plugins()
    info = read_info(Path(cache))
    with tempfile.TemporaryDirectory() as tmp:
        parts = build_training(cfg, info, Path(tmp), rank, world)
        rate = samples_per_second(parts, cache_batches(parts, cfg, info, rank, world), args.steps, args.warmup)
    total = torch.tensor([rate], dtype=torch.float64)
    torch.distributed.all_reduce(total)  # every rank runs its own batch each step: global rate = sum
    if rank == 0:
        Path(out).write_text(json.dumps({"samples_per_s": float(total[0])}))
    torch.distributed.destroy_process_group()


def ddp_rate(args: argparse.Namespace, cache: Path, amp: str) -> float:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rate.json"
        mp.start_processes(_ddp_worker, args=(args.procs, free_port(), vars(args), str(cache), amp, str(out)),
                           nprocs=args.procs, start_method="spawn")
        return json.loads(out.read_text())["samples_per_s"]


def prepare_demo(args: argparse.Namespace, ws: Path) -> Path:
    from rich.console import Console

    from mmvid.workflows import run_prepare

    return run_prepare(Console(quiet=True), ws, "demo", clips=args.clips, progress=False, workers=2,
                       params={"image_size": args.image_size, **CREMAD_AUDIO})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, help="an existing HDF5 cache (default: a demo cache at CREMA-D shapes)")
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--batch-size", type=int, default=16, help="per process")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--cache-on-gpu", action="store_true", help="feed from tensors on the device (mmvid --cache-on-gpu)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (mmvid --set compile=true)")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    p.add_argument("--rounds", type=int, default=3, help="alternating measurements per side; medians reported")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--procs", type=int, default=2, help="processes for the DDP figure (0: skip)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()

    load_plugins()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or prepare_demo(args, Path(tmp))
        info = read_info(cache)
        cuda = make_cfg(args, "off", cache).device != "cpu" and torch.cuda.is_available()
        amps = ["off", "bf16", "fp16"] if cuda else ["off", "bf16"]
        rows: dict[str, dict[str, float]] = {}
        for amp in amps:
            cfg = make_cfg(args, amp, cache)
            parts = build_training(cfg, info, Path(tmp) / "run")
            sources = {"compute_limit": (fixed_batch(parts, cfg, info), args.warmup),
                       "cache_fed": (cache_batches(parts, cfg, info), max(args.warmup, 2 * args.workers))}
            rates: dict[str, list[float]] = {k: [] for k in sources}
            for r in range(args.rounds):
                for side in (sorted(sources) if r % 2 else sorted(sources, reverse=True)):
                    batches, warmup = sources[side]
                    rates[side].append(samples_per_second(parts, batches, args.steps, warmup))
            fed, compute = statistics.median(rates["cache_fed"]), statistics.median(rates["compute_limit"])
            rows[amp] = {"cache_fed": fed, "compute_limit": compute, "ratio": fed / compute,
                         "rounds": {k: [round(v, 2) for v in vals] for k, vals in rates.items()}}
        best_amp = max((a for a in amps if a != "off"), key=lambda a: rows[a]["compute_limit"])
        report = {
            "device": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
            "shapes": {k: list(v) for k, v in info.shapes.items()}, "batch_size": args.batch_size,
            "encoder": args.encoder, "workers": args.workers, "cache_on_gpu": args.cache_on_gpu, "steps": args.steps,
            "rounds": args.rounds, "channels_last": args.channels_last, "compile": args.compile,
            "torch": torch.__version__, "amp": rows,
            "amp_speedup": {a: rows[a]["compute_limit"] / rows["off"]["compute_limit"] for a in amps if a != "off"},
        }
        if args.procs > 1 and cuda and torch.cuda.device_count() < args.procs:
            report["ddp"] = {"skipped": f"{args.procs} processes need {args.procs} GPUs; {torch.cuda.device_count()} visible"}
        elif args.procs > 1:
            amp = best_amp if cuda else "off"
            multi = ddp_rate(args, cache, amp)
            report["ddp"] = {"amp": amp, "procs": args.procs, "samples_per_s": multi,
                             "speedup_over_1": multi / rows[amp]["cache_fed"]}
    _print(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def _print(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"training-step throughput (medians of {report['rounds']} x {report['steps']} steps), "
                        f"{report['device']}, batch {report['batch_size']}, "
                        f"{report['encoder']}, shapes {report['shapes']}")
    for col in ("amp", "cache-fed samples/s", "compute limit samples/s", "cache / limit"):
        table.add_column(col, justify="right")
    for amp, r in report["amp"].items():
        table.add_row(amp, f"{r['cache_fed']:.2f}", f"{r['compute_limit']:.2f}", f"{r['ratio']:.2f}")
    console = Console()
    console.print(table)
    for amp, s in report["amp_speedup"].items():
        console.print(f"AMP {amp} over fp32 (compute limit): x{s:.2f}")
    d = report.get("ddp", {})
    if "skipped" in d:
        console.print(f"DDP figure skipped: {d['skipped']}")
    elif d:
        console.print(f"{d['procs']} processes over 1 (cache-fed, amp {d['amp']}): {d['samples_per_s']:.2f} samples/s, "
                      f"x{d['speedup_over_1']:.2f}")


if __name__ == "__main__":
    main()
