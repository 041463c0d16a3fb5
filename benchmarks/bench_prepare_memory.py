"""Peak memory of `prepare` at 50 and at 800 clips, in one process and with N decoder workers.

    PYTHONPATH=. python -m benchmarks.bench_prepare_memory [--sizes 50,800] [--workers 2] [--distinct 16]

Clips like CREMA-D's: 480x360, 30 fps, 2.5 s, H.264 + AAC mono 44.1 kHz, written with PyAV
(``mmvid.data.sources.demo.write_mp4``); prepared with the CREMA-D preset (1 fps, T = 3, 224 px, 22,050 Hz,
3 s, n_fft 512, hop 353). ``--distinct`` different files are generated (about 1 s each) and the
folder of each size holds symlinks to them in turn: the decoders' leaks are per call, whatever the file.

Each run is a fresh Python process (``prepare`` on a ``folder`` source), which reports its own peak
resident memory (``VmHWM``: the parent, which also writes the cache) and the largest peak among its
child processes (``getrusage(RUSAGE_CHILDREN).ru_maxrss``: the decoder workers, all waited for by the
time ``prepare`` returns). Goal: the 800-clip peak within 10 % of the 50-clip peak, for both.

To measure another checkout's ``mmvid`` (e.g. before a change), run this file with its PYTHONPATH:
``PYTHONPATH=/path/to/other python benchmarks/bench_prepare_memory.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PARAMS = dict(fps=1.0, num_frames=3, image_size=224, sample_rate=22050, clip_seconds=3.0, n_fft=512, hop=353)
CLASSES = 4


def make_clips(out: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` distinct CREMA-D-sized clips: a moving colour pattern with a little noise, a tone with noise."""
    from mmvid.data.sources.demo import write_mp4

    rng = np.random.default_rng(seed)
    t_, h, w, fps, sr = 75, 360, 480, 30, 44100
    yy, xx = np.mgrid[0:h, 0:w]
    files = []
    for k in range(n):
        frames = np.empty((t_, h, w, 3), np.uint8)
        for t in range(t_):
            base = (xx + 4 * t + 30 * k) % 256
            frames[t, ..., 0], frames[t, ..., 1] = base, (yy + 2 * t) % 256
            frames[t, ..., 2] = (base // 2 + yy // 2) % 256
        frames += rng.integers(0, 4, frames.shape, dtype=np.uint8)
        tt = np.arange(int(2.5 * sr)) / sr
        wave = (0.3 * np.sin(2 * np.pi * (200 + 20 * k) * tt) + 0.05 * rng.normal(size=tt.shape)).astype(np.float32)
        files.append(out / f"clip{k:03d}.mp4")
        write_mp4(files[-1], frames, wave, fps=fps, sr=sr)
    return files


def folder(root: Path, files: list[Path], n: int) -> Path:
    """``<class>/<clip>.mp4`` symlinks (the ``folder`` source's layout): ``n`` clips over ``CLASSES`` classes."""
    for k in range(n):
        d = root / f"c{k % CLASSES}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"clip{k:04d}.mp4").symlink_to(files[k % len(files)])
    return root


def child(root: Path, cache: Path, workers: int) -> None:
    """One measured run (in its own process): prints a JSON line with the peaks in MB and the seconds."""
    from mmvid.data.prepare import PrepareParams, prepare
    from mmvid.data.sources import get_source

    src = get_source("folder")(root=root, seed=0)
    t0 = time.perf_counter()
    report = prepare(src, cache, PrepareParams(**PARAMS), workers=workers, progress=False)
    seconds = time.perf_counter() - t0
    status = Path("/proc/self/status").read_text()
    hwm = int(status.split("VmHWM:")[1].split()[0]) / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KB on Linux
    print(json.dumps({"clips": report.total, "ok": report.ok, "parent_mb": hwm, "workers_mb": kids,
                      "seconds": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50,800", help="clip counts to compare, smallest first")
    ap.add_argument("--workers", type=int, default=2, help="N of the parallel runs (1 is always measured)")
    ap.add_argument("--distinct", type=int, default=16, help="distinct generated files behind the symlinks")
    ap.add_argument("--child", nargs=3, metavar=("ROOT", "CACHE", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), int(args.child[2]))
        return
    import mmvid

    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="mmvid-bench-mem-"))
    try:
        t0 = time.perf_counter()
        files = make_clips(tmp / "distinct", args.distinct)
        print(f"mmvid from {Path(mmvid.__file__).parent}; {args.distinct} distinct clips generated in "
              f"{time.perf_counter() - t0:.0f} s; folders of {sizes} symlinks to them", flush=True)
        results = {}
        for workers in sorted({1, args.workers}):
            for n in sizes:
                root = folder(tmp / f"raw{n}", files, n) if not (tmp / f"raw{n}").exists() else tmp / f"raw{n}"
                cache = tmp / f"w{workers}_{n}.h5"
                # the child imports the same mmvid as this process (the file path and cwd keep a checkout's
                # own mmvid/ folder from shadowing it)
                out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(root), str(cache),
                                      str(workers)], capture_output=True, text=True, cwd=tmp,
                                     env={**os.environ, "PYTHONPATH": str(Path(mmvid.__file__).resolve().parent.parent)})
                if out.returncode:
                    raise SystemExit(out.stdout + out.stderr)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                assert r["ok"] == n, r
                results[workers, n] = r
                kids = f", largest worker {r['workers_mb']:.0f} MB" if workers > 1 else ""
                print(f"workers {workers}, {n} clips: parent peak {r['parent_mb']:.0f} MB{kids} "
                      f"({r['seconds']:.0f} s, {n / r['seconds']:.1f} clips/s)", flush=True)
                cache.unlink()
        lo, hi = sizes[0], sizes[-1]
        for workers in sorted({1, args.workers}):
            a, b = results[workers, lo], results[workers, hi]
            for key, what in (("parent_mb", "parent"), ("workers_mb", "largest worker"))[:1 + (workers > 1)]:
                ratio = b[key] / a[key]
                print(f"workers {workers}, {what}: {hi} clips / {lo} clips = {b[key]:.0f} / {a[key]:.0f} MB = "
                      f"{ratio:.3f} ({(b[key] - a[key]) / (hi - lo) * 1024:+.0f} KB per clip; "
                      f"goal <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
