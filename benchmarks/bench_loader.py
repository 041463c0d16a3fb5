"""The training input pipeline against OGM-GE's own CREMA-D loader, in training mode, each at its defaults.

    PYTHONPATH=. python -m benchmarks.bench_loader --reference FILE [--workers 0,2] [--steps 20] [--rounds 5] [--batch 64] [--device-path]

The reference is ``CramedDataset`` of GeWu-Lab/OGM-GE_CVPR2022 (``dataset/CramedDataset.py``, commit
0f64793), run unmodified: pass its file as ``--reference FILE`` (``git clone
https://github.com/GeWu-Lab/OGM-GE_CVPR2022 && git -C OGM-GE_CVPR2022 checkout 0f64793``, then
``--reference OGM-GE_CVPR2022/dataset/CramedDataset.py``); it is imported as it is, and nothing of it is
copied into this repository. It runs
in ``mode='train'`` at its ``main.py`` defaults (``--fps 1``: one frame per clip; batch 64) on the layout it
expects: the original 16 kHz ``AudioWAV/*.wav`` (``librosa.load(sr=22050)`` resamples every item), and
``Image-01-FPS/<clip>/`` folders of JPEG frames at the native 480x360, one per second, as its
``data/CREMAD/video_preprocessing.py`` (``video2frame_update``) writes them (re-typed below with OpenCV).
Every item: librosa load + resample + STFT, one JPEG decoded, RandomResizedCrop(224), flip,
ToTensor, Normalize.

mmvid runs its training path at the ``cremad`` recipe's defaults (2 frames at 1 fps, 224 px, 22,050 Hz,
3 s): ``engine.loaders.make_loader(train=True)`` and, per batch, ``engine.loaders.to_device`` (what ``train_step`` does
first: the batch moved to the device and finished there: frames normalised, the random resized crop and
flip of training applied).

Both sides read the 6 real CREMA-D clips of ../shared/data, listed again and again to fill the epoch
(both from the page cache after the first pass). Each measurement times ``--steps`` batches after the
warm-up batches (worker start-up and the batches the workers prefetched meanwhile are not counted); the
two sides alternate within each round (the order swaps every round) so that load from other processes
hits both alike; the medians over ``--rounds`` rounds and their ratio are printed.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REFERENCE_REPO = "GeWu-Lab/OGM-GE_CVPR2022"
REFERENCE_FILE = "dataset/CramedDataset.py"
REFERENCE_COMMIT = "0f64793"
HOW_TO_GET = (f"clone https://github.com/{REFERENCE_REPO} at commit {REFERENCE_COMMIT} and pass "
              f"--reference OGM-GE_CVPR2022/{REFERENCE_FILE}")


def reference_source(path: Path | None) -> Path:
    """The reference loader's file, as given with ``--reference``; one line saying how to get it otherwise."""
    if path is None or not Path(path).is_file():
        where = f"{path} is not a file" if path is not None else "--reference FILE is needed"
        raise SystemExit(f"{where}: {HOW_TO_GET}")
    return Path(path)


def load_reference_class(path: Path):
    spec = importlib.util.spec_from_file_location("ogm_ge_cramed_dataset", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CramedDataset


def frames_one_per_second(video: Path, out: Path) -> None:
    """OGM-GE's ``video2frame_update(frame_kept_per_second=1)``: the first frame of every second, native size."""
    import cv2

    out.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    fps = int(cap.get(cv2.CAP_PROP_FPS)) or 25
    count = 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        if count % fps == 0:
            cv2.imwrite(str(out / f"{count:05d}.jpg"), image)
        count += 1
    cap.release()


def reference_dataset(crema: Path, tmp: Path, names: list[str], n_items: int, ref_file: Path | None):
    """``CramedDataset(args, mode='train')`` over ``n_items`` rows cycling through ``names``."""
    visual = tmp / "visual"
    for n in names:
        frames_one_per_second(crema / "VideoFlash" / f"{n}.flv", visual / "Image-01-FPS" / n)
    listing = tmp / "CREMAD"
    listing.mkdir()
    with open(listing / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([names[i % len(names)], names[i % len(names)].split("_")[2]] for i in range(n_items))
    (listing / "test.csv").write_text("")
    cls = load_reference_class(reference_source(ref_file))
    # main.py's defaults; `dataset` absolute: os.path.join('./data/', dataset + '/train.csv') keeps it.
    args = SimpleNamespace(dataset=str(listing), fps=1, audio_path=str(crema / "AudioWAV"), visual_path=str(visual))
    ds = cls(args, mode="train")
    assert len(ds) == n_items, f"the reference found {len(ds)} of {n_items} items"
    return ds


def mmvid_loader_factory(crema: Path, ws: Path, n_items: int):
    import numpy as np
    import torch
    from rich.console import Console

    from mmvid.config import resolve_config
    from mmvid.data.cache import read_info
    from mmvid.engine.loaders import make_loader, to_device
    from mmvid.workflows import run_prepare

    cache = run_prepare(Console(quiet=True), ws, "cremad", root=crema, progress=False)
    info = read_info(cache)
    ok = np.flatnonzero(info.status == 1)
    rows = np.resize(ok, n_items)
    device = torch.device("cpu")

    def make(workers: int, batch: int, device_path: bool = False):
        gpu = device_path and torch.cuda.is_available()
        cfg = resolve_config("cremad", {"data.workers": workers, "data.batch_size": batch,
                                        "device": "cuda" if gpu else "cpu"})
        loader = make_loader(info, rows, cfg, train=True)
        if not device_path:
            return loader, lambda b: to_device(b[0], device)
        # GPU training's path: the workers read and collate uint8 rows and each clip's crop box; the
        # crop, flip and normalisation run batched on the device.
        loader.dataset.crop_in_loader = False
        if not gpu:  # the host's share alone: what the device would do is not timed
            return loader, lambda b: b[0]

        def finish(b):
            out = to_device(b[0], torch.device("cuda"))
            torch.cuda.synchronize()
            return out
        return loader, finish

    return make, info


def measure(loader, finish, steps: int, warmup: int) -> float:
    """Samples/s over ``steps`` batches after ``warmup`` (worker start-up, prefetched batches)."""
    it = iter(loader)
    for _ in range(warmup):
        finish(next(it))
    t0, seen = time.perf_counter(), 0
    for _ in range(steps):
        x = finish(next(it))
        seen += len(next(iter(x.values())) if isinstance(x, dict) else x)
    rate = seen / (time.perf_counter() - t0)
    del it
    return rate


def main() -> None:
    import torch
    from rich.console import Console
    from torch.utils.data import DataLoader

    from tests.conftest import shared_data_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=shared_data_dir())
    ap.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    ap.add_argument("--steps", type=int, default=20, help="timed batches per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved measurements per side; medians printed")
    ap.add_argument("--batch", type=int, default=64, help="batch size (OGM-GE's and the paper's: 64)")
    ap.add_argument("--device-path", action="store_true",
                    help="time mmvid's GPU-training path (crop, flip, normalisation batched on the device); "
                         "without a GPU, the host's share of it alone")
    ap.add_argument("--reference", type=Path, help=f"{REFERENCE_FILE} of {REFERENCE_REPO} at commit {REFERENCE_COMMIT}")
    args = ap.parse_args()
    reference_source(args.reference)  # before any work: one line saying how to get the file
    if args.data is None or not (Path(args.data) / "crema_d" / "VideoFlash").is_dir():
        raise SystemExit("real CREMA-D clips not found: pass --data (the folder holding crema_d/) or set MMVID_SHARED_DATA")
    crema = Path(args.data) / "crema_d"
    con = Console()
    tmp = Path(tempfile.mkdtemp(prefix="mmvid-bench-loader-"))
    try:
        workers = [int(w) for w in args.workers.split(",")]
        n_items = args.batch * (args.steps + 2 * max(workers) + 2) * 2  # never runs out within one measurement
        make_mmvid, info = mmvid_loader_factory(crema, tmp / "ws", n_items)
        names = [str(n) for n, s in zip(info.names, info.status) if s == 1]
        ref_ds = reference_dataset(crema, tmp / "ref", names, n_items, args.reference)
        con.print(f"{len(names)} real CREMA-D clips, {n_items} items per epoch, batch {args.batch}, training mode; "
                  f"torch threads {torch.get_num_threads()}")
        if args.device_path:
            on = "on the GPU" if torch.cuda.is_available() else "not timed (no GPU): the host's share alone"
            con.print(f"mmvid's GPU-training path: crop, flip and normalisation batched on the device, {on}")

        def reference_finish(b):
            if args.device_path and torch.cuda.is_available():  # main.py's spec.to(device), image.to(device)
                out = [t.to("cuda", non_blocking=True) for t in b[:2]]
                torch.cuda.synchronize()
                return out[1]
            return b[1]
        for w in workers:
            warmup = max(1, 2 * w)  # a DataLoader prefetches 2 batches per worker
            rates: dict[str, list[float]] = {"mmvid": [], "reference": []}
            for r in range(args.rounds):
                order = ["mmvid", "reference"] if r % 2 == 0 else ["reference", "mmvid"]
                for side in order:
                    if side == "mmvid":
                        loader, finish = make_mmvid(w, args.batch, args.device_path)
                    else:  # main.py: DataLoader(shuffle=True, pin_memory=True); pinning only with a GPU here
                        loader = DataLoader(ref_ds, batch_size=args.batch, shuffle=True, num_workers=w,
                                            pin_memory=torch.cuda.is_available())
                        finish = reference_finish  # (spectrogram, images, label): images are model-ready
                    rates[side].append(measure(loader, finish, args.steps, warmup))
                    del loader
                con.print(f"  {w} workers, round {r + 1}: mmvid {rates['mmvid'][-1]:.1f}, "
                          f"reference {rates['reference'][-1]:.1f} samples/s")
            m, ref = statistics.median(rates["mmvid"]), statistics.median(rates["reference"])
            ratios = [a / b for a, b in zip(rates["mmvid"], rates["reference"])]
            con.print(f"[bold]{w} workers[/]: mmvid {m:.1f} samples/s, OGM-GE CramedDataset {ref:.1f} samples/s "
                      f"(medians of {args.rounds} x {args.steps} batches of {args.batch}): [bold]{m / ref:.2f}x[/] "
                      f"(per-round ratios {min(ratios):.2f}-{max(ratios):.2f}x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
