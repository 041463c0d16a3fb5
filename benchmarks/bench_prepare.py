"""Speed of `prepare` and of the cache loader against the reference implementations' path.

    PYTHONPATH=. python -m benchmarks.bench_prepare [--workers 2] [--epochs 4] [--data ../shared/data]

On the real clips of ../shared/data (6 CREMA-D flv, 6 YouTube-style clips, 1 UCF-101 avi; the
no-audio clip gets zero spectrograms), with the CREMA-D preset (1 fps, T = 3, 224 px, 22,050 Hz,
3 s, n_fft 512, hop 353). Measures, in one run:

1. ``prepare`` clips/s in one process (after one warm-up clip, so library import time is not
   counted; and again with ``--workers`` processes, start-up included) against the reference
   preprocessing: every 1-fps frame written to a JPEG folder with OpenCV and the audio
   track written to a wav per clip (what OGM-GE-style repositories do before training);
2. samples/s of ``CacheDataset`` against the reference on-the-fly Dataset, which in
   ``__getitem__`` reads T JPEGs of the folder, resizes and normalises them and loads the wav with
   librosa and computes the log spectrogram, every epoch; same DataLoader workers and batch size,
   once in-process (0 workers: the per-sample cost) and once with ``--workers`` (where moving the
   batches between processes adds the same cost to both paths); each the median of ``--repeats``
   interleaved measurements.

It prints each figure and the ratios. Timings on a shared machine vary by some tens of percent.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

CLIPS = {
    "crema": [f"crema_d/VideoFlash/1001_DFA_{e}_XX.flv" for e in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")],
    "youtube": [f"kinetics_sounds_style/videos/{n}" for n in ("chaplin.mp4", "flipping_a_pancake.mkv", "nasa_13013.mp4",
                                                              "v_GGSY1Qvo990.mp4", "v_ZNVhz7ctTq0.mp4",
                                                              "mmaction2_test_noaudio.mp4")],
    "ucf": ["ucf101/UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"],
}
PARAMS = dict(fps=1.0, num_frames=3, image_size=224, sample_rate=22050, clip_seconds=3.0, n_fft=512, hop=353,
              missing_audio="zeros")


def folder_tree(data: Path, out: Path) -> Path:
    """``<class>/<clip>`` symlinks to the real clips (the `folder` source's layout)."""
    for cls, files in CLIPS.items():
        (out / cls).mkdir(parents=True, exist_ok=True)
        for f in files:
            (out / cls / Path(f).name).symlink_to(data / f)
    return out


# ----------------------------------------------------------------------------- reference path


def reference_preprocess(video: Path, out: Path, sr: int) -> None:
    """Frames at 1 fps to ``out/frames/img_%05d.jpg`` (native size) with OpenCV, audio to ``out/audio.wav``."""
    import cv2
    import soundfile

    from mmvid.data.decode import NoAudioError, decode_audio

    frames_dir = out / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    i = k = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        if i / fps >= k + 0.5 - 1e-9:  # the frame shown at the centre of second k
            k += 1
            cv2.imwrite(str(frames_dir / f"img_{k:05d}.jpg"), img)
        i += 1
    cap.release()
    if k == 0 and i:  # shorter than half a second: keep its last frame
        cv2.imwrite(str(frames_dir / "img_00001.jpg"), img)
    try:
        wave = decode_audio(video, sr)
    except NoAudioError:
        wave = np.zeros(sr, dtype=np.float32)
    soundfile.write(str(out / "audio.wav"), wave, sr)


class OnTheFlyDataset:
    """The reference loader, as OGM-GE's ``CramedDataset`` (the loader the B-MM code builds on) does it in
    every ``__getitem__``: librosa loads the wav, tiles and clips it to 3 s and computes the log STFT; each
    of the T JPEGs is opened with PIL and goes through torchvision's Resize((S, S)), ToTensor and
    Normalize (its test-time transform; the cache path is also measured without augmentation)."""

    def __init__(self, folders: list[Path], labels: list[int]) -> None:
        self.folders, self.labels = folders, labels
        self.transform = None

    def __len__(self) -> int:
        return len(self.folders)

    def __getitem__(self, i: int):
        import librosa
        import torch
        from PIL import Image
        from torchvision import transforms

        from mmvid.data.decode import select_indices
        from mmvid.data.features import log_spectrogram
        from mmvid.data.torch_dataset import IMAGENET_MEAN, IMAGENET_STD, spec_to_tensor

        p = PARAMS
        if self.transform is None:
            self.transform = transforms.Compose([
                transforms.Resize(size=(p["image_size"],) * 2), transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN.flatten().tolist(), IMAGENET_STD.flatten().tolist())])
        files = sorted((self.folders[i] / "frames").glob("img_*.jpg"))
        idx = select_indices(len(files), 1.0, p["num_frames"], None)
        video = torch.stack([self.transform(Image.open(files[j]).convert("RGB")) for j in idx])
        wave, _ = librosa.load(str(self.folders[i] / "audio.wav"), sr=p["sample_rate"])
        spec = log_spectrogram(wave, p["sample_rate"], p["clip_seconds"], p["n_fft"], p["hop"])
        return {"audio": spec_to_tensor(spec), "video": video}, torch.tensor(self.labels[i])


def loader_rate(dataset, n_samples: int, workers: int, batch: int) -> float:
    """Samples/s over ``n_samples`` (whole epochs) through a DataLoader, after one warm-up batch."""
    from torch.utils.data import DataLoader, Subset

    from mmvid.data.torch_dataset import finish_batch

    reps = int(np.ceil(n_samples / len(dataset)))
    ds = Subset(dataset, list(range(len(dataset))) * reps)
    dl = DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=True, persistent_workers=workers > 0)
    it = iter(dl)
    next(it)  # workers started, imports done
    t0, seen = time.perf_counter(), 0
    for x, _ in it:
        x = finish_batch(x)  # the cache path leaves frame normalisation to this batched step
        seen += len(x["audio"])
    return seen / (time.perf_counter() - t0)


def main() -> None:
    from rich.console import Console

    from tests.conftest import shared_data_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=shared_data_dir())
    ap.add_argument("--workers", type=int, default=2, help="prepare processes and DataLoader workers")
    ap.add_argument("--epochs", type=int, default=60, help="loader epochs over the clips, per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per loader; the median is printed")
    ap.add_argument("--batch", type=int, default=16, help="DataLoader batch size (OGM-GE trains CREMA-D with 64)")
    args = ap.parse_args()
    if args.data is None or not Path(args.data).is_dir():
        raise SystemExit("real clips not found: pass --data or set MMVID_SHARED_DATA")
    import torch

    # One intra-op thread, as DataLoader workers use: on a busy machine two threads per process wait on each other.
    torch.set_num_threads(1)
    con = Console()
    tmp = Path(tempfile.mkdtemp(prefix="mmvid-bench-"))
    try:
        from mmvid.data.cache import read_info
        from mmvid.data.prepare import PrepareParams, prepare, process_clip
        from mmvid.data.sources import get_source
        from mmvid.data.torch_dataset import CacheDataset

        src = get_source("folder")(root=folder_tree(args.data, tmp / "raw"), seed=0)
        n = len(src.clips)
        params = PrepareParams(**PARAMS)
        process_clip(src.clips[0], params)  # warm-up: librosa / decoder imports
        t0 = time.perf_counter()
        prepare(src, tmp / "bench.h5", params, workers=1, progress=False)
        t_prep = time.perf_counter() - t0
        t0 = time.perf_counter()
        prepare(src, tmp / "bench_workers.h5", params, workers=args.workers, progress=False)
        t_pool = time.perf_counter() - t0
        reference_preprocess(src.clips[0].video, tmp / "warm", params.sample_rate)
        t0 = time.perf_counter()
        for c in src.clips:
            reference_preprocess(c.video, tmp / "ref" / c.name, params.sample_rate)
        t_ref = time.perf_counter() - t0
        con.print(f"prepare, 1 process: {n / t_prep:.2f} clips/s ({t_prep:.2f} s for {n} clips)")
        con.print(f"reference preprocessing, 1 process (JPEG folders + wav): {n / t_ref:.2f} clips/s ({t_ref:.2f} s)")
        con.print(f"  ratio prepare / reference: {t_ref / t_prep:.2f}x (goal >= 1x)")
        con.print(f"prepare, {args.workers} workers, wall clock including worker start-up (imports): "
                  f"{n / t_pool:.2f} clips/s ({t_pool:.2f} s)")
        info = read_info(tmp / "bench.h5")
        idx = np.flatnonzero(info.status == 1)
        cache_ds = CacheDataset(tmp / "bench.h5", idx, ["audio", "video"])
        ref_ds = OnTheFlyDataset([tmp / "ref" / info.names[i] for i in idx], [int(info.labels[i]) for i in idx])
        n_samples = args.epochs * len(idx)
        for workers in sorted({0, args.workers}):
            # Interleaved and repeated, so that a burst of load from another process hits both paths alike.
            rates = [(loader_rate(cache_ds, n_samples, workers, args.batch),
                      loader_rate(ref_ds, n_samples, workers, args.batch)) for _ in range(args.repeats)]
            r_cache, r_ref = np.median(rates, axis=0)
            con.print(f"loader, {workers} workers, batch {args.batch}, {n_samples} samples: cache {r_cache:.1f} samples/s, "
                      f"on-the-fly (JPEG + librosa) {r_ref:.1f} samples/s")
            con.print(f"  ratio cache / on-the-fly: {r_cache / r_ref:.2f}x (goal >= 5x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
