"""The reference protocol's inputs: cache disk per clip, and the training loader under ``data.crop: reference``
against ``clip``.

    PYTHONPATH=. python -m benchmarks.bench_inputs [--workers 0,2] [--steps 10] [--rounds 5] [--batch 64]

Prepares the 6 real CREMA-D clips of ../shared/data twice: mmvid's default (2 frames squashed to 224 x 224) and
``--preset remix`` (2 frames kept at the native 480 x 360, the size the references crop from), and the two
Kinetics-style clips under Kinetics-Sounds' default (OGM-GE's inputs: 3 frames at 640 x 360, a 1024 x 128
filterbank) and ``--preset mmvid`` (3 frames at 224 x 224, a 257 x 454 STFT). Prints the bytes per clip of each
cache (the HDF5 file over its clips; uncompressed, so it follows from the shapes).

Then times mmvid's training loader (``engine.loaders.make_loader(train=True)`` and ``engine.loaders.to_device`` on the CPU, the
path CPU training takes: the crop in the loader's workers) on the 6 clips repeated: the default cache with
``data.crop: clip`` (today's protocol) against the native cache with ``data.crop: reference`` (a crop and flip
per frame, scale 0.08-1, resized to 224). The two alternate within each round; medians over ``--rounds``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path


def bytes_per_clip(cache: Path) -> tuple[float, dict[str, tuple[int, ...]]]:
    from mmvid.data.cache import read_info

    info = read_info(cache)
    return cache.stat().st_size / len(info.names), info.shapes


def main() -> None:
    import numpy as np
    import torch
    from rich.console import Console

    from benchmarks.bench_loader import measure
    from mmvid.config import resolve_config
    from mmvid.data.cache import read_info
    from mmvid.engine.loaders import make_loader, to_device
    from mmvid.workflows import run_prepare
    from tests.conftest import shared_data_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=shared_data_dir())
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    if args.data is None or not (Path(args.data) / "crema_d" / "VideoFlash").is_dir():
        raise SystemExit("real clips not found: pass --data (the folder holding crema_d/) or set MMVID_SHARED_DATA")
    con, quiet = Console(), Console(quiet=True)
    tmp = Path(tempfile.mkdtemp(prefix="mmvid-bench-inputs-"))
    try:
        ws = tmp / "ws"
        crema = Path(args.data) / "crema_d"
        caches = {"cremad (mmvid: 2 x 224 x 224)": run_prepare(quiet, ws, "cremad", root=crema, progress=False),
                  "cremad --preset remix (2 x 360 x 480)": run_prepare(quiet, ws, "cremad", root=crema, name="cremad-remix",
                                                                      preset="remix", progress=False)}
        ks = tmp / "ks"
        for cls, clip in (("a", "flipping_a_pancake.mkv"), ("b", "chaplin.mp4")):
            (ks / cls).mkdir(parents=True)
            (ks / cls / clip).symlink_to(Path(args.data) / "kinetics_sounds_style" / "videos" / clip)
        caches["kinetics-sounds (OGM-GE: 3 x 360 x 640, fbank)"] = run_prepare(quiet, ws, "kinetics-sounds", root=ks,
                                                                                progress=False)
        caches["kinetics-sounds --preset mmvid (3 x 224 x 224, STFT)"] = run_prepare(
            quiet, ws, "kinetics-sounds", root=ks, name="ks-mmvid", preset="mmvid", progress=False)
        for what, cache in caches.items():
            per, shapes = bytes_per_clip(cache)
            con.print(f"{what}: {per:,.0f} bytes per clip ({shapes})")

        n_items = args.batch * (args.steps + 2 * 4 + 2) * 2
        sides = {"clip": (caches["cremad (mmvid: 2 x 224 x 224)"], {}),
                 "reference": (caches["cremad --preset remix (2 x 360 x 480)"],
                               {"data.crop": "reference", "data.crop_size": 224})}

        def make(side: str, workers: int):
            cache, over = sides[side]
            info = read_info(cache)
            rows = np.resize(np.flatnonzero(info.status == 1), n_items)
            cfg = resolve_config("cremad", {"data.workers": workers, "data.batch_size": args.batch, "device": "cpu",
                                            **over})
            return make_loader(info, rows, cfg, train=True), lambda b: to_device(b[0], torch.device("cpu"))

        con.print(f"loader, training mode, batch {args.batch}, 6 real CREMA-D clips repeated; torch threads "
                  f"{torch.get_num_threads()}")
        for w in [int(x) for x in args.workers.split(",")]:
            rates: dict[str, list[float]] = {"clip": [], "reference": []}
            for r in range(args.rounds):
                for side in (["clip", "reference"] if r % 2 == 0 else ["reference", "clip"]):
                    loader, finish = make(side, w)
                    rates[side].append(measure(loader, finish, args.steps, max(1, 2 * w)))
                    del loader
            c, ref = statistics.median(rates["clip"]), statistics.median(rates["reference"])
            con.print(f"[bold]{w} workers[/]: crop clip (224 cache) {c:.1f} samples/s, crop reference (native cache) "
                      f"{ref:.1f} samples/s (medians of {args.rounds} x {args.steps} batches): reference/clip "
                      f"{ref / c:.2f}x (rounds: clip {', '.join(f'{x:.0f}' for x in rates['clip'])}; reference "
                      f"{', '.join(f'{x:.0f}' for x in rates['reference'])})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
