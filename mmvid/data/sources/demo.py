"""The embedded demo data set: real mp4 files (H.264 video + AAC audio) generated from a seed.

A 10-class audio-visual task with modality imbalance built in:

* **audio** (easy, learned first): a three-tone chord (root, major third, fifth) plus white noise.
  Classes c and c + 5 share a chord (``chords=5``), so audio alone is learned within two epochs but
  tops out at 50 % on test;
* **video** (harder, genuinely learnable): a real handwritten digit of the class, taken from the
  digits set bundled with scikit-learn (UCI, 8x8; train and test clips use disjoint halves of each
  class's digits), upscaled to 16x16 and drifting across a noisy 32x32 frame. Video alone reaches
  about 55 % (10 % is chance) and is the only way to tell c from c + 5.

A fused model can therefore reach far above either modality alone (about 85-90 %), but only if it
does not stop at the audio shortcut: the imbalance factor rho starts well above 1 (audio strong).

The files are written under ``<workspace>/raw/demo/<class>/<clip>.mp4`` with ``splits/{train,test}.txt``
and read back through the same decode -> features -> cache path as real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmvid.data.sources.base import ClipSpec, Source, source
from mmvid.errors import MmvidError
from mmvid.workspace import writable_dir

CLASS_NAMES = [f"digit{i}" for i in range(10)]
FPS = 5
SECONDS = 2.0
SIZE = 32
SR = 16000
# Roots 250 Hz apart: with n_fft 512 at 16 kHz (31 Hz bins) every chord's partials fall in distinct bins.
ROOTS = 250.0 * (1 + np.arange(10))

DEMO_PARAMS = dict(fps=None, num_frames=3, image_size=SIZE, sample_rate=SR, clip_seconds=SECONDS,
                   n_fft=512, hop=256, tile_audio=True)


def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The UCI 8x8 handwritten digits bundled with scikit-learn: images (1797, 8, 8) in [0, 1], targets (1797,)."""
    # scikit-learn takes a second to import: only a generation needs it, not every import of the sources
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target


def _video(rng: np.random.Generator, digit: np.ndarray, noise: float) -> np.ndarray:
    """(FPS*SECONDS, SIZE, SIZE, 3) uint8: the digit (upscaled to 16x16) drifting over noise."""
    n = int(FPS * SECONDS)
    big = np.kron(digit, np.ones((2, 2), dtype=np.float32))  # 16 x 16
    h = big.shape[0]
    start = rng.uniform(0, SIZE - h, size=2)
    end = rng.uniform(0, SIZE - h, size=2)
    tint = rng.uniform(0.6, 1.0, size=3)
    frames = np.empty((n, SIZE, SIZE, 3), dtype=np.float32)
    for t in range(n):
        y, x = np.round(start + (end - start) * t / max(n - 1, 1)).astype(int)
        img = rng.normal(0.25, noise, size=(SIZE, SIZE)).astype(np.float32)
        img[y:y + h, x:x + h] += big
        frames[t] = img[..., None] * tint
    return (np.clip(frames, 0, 1) * 255).astype(np.uint8)


def _audio(rng: np.random.Generator, cls: int, noise: float) -> np.ndarray:
    t = np.arange(int(SR * SECONDS)) / SR
    root = ROOTS[cls]
    wave = sum(np.sin(2 * np.pi * root * r * t + rng.uniform(0, 2 * np.pi)) for r in (1.0, 1.25, 1.5))
    wave = 0.2 * wave / 3 + rng.normal(0, noise, size=t.shape)
    return np.clip(wave, -1, 1).astype(np.float32)


def write_mp4(path: Path, frames: np.ndarray, wave: np.ndarray, fps: int = FPS, sr: int = SR) -> None:
    """Write H.264 video + AAC mono audio with PyAV."""
    import av  # PyAV (FFmpeg's libraries) loads only where a clip is written, not with the sources


    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        # Lossless H.264 (qp 0): at crf 18, x264 wrote other bytes for the same pixels from one run to the next
        # (up to 1 clip in 3 on a busy machine, with one thread too), so a regenerated demo decoded to other
        # frames and what was trained on it differed. Lossless, the decoded frames are the yuv420p input.
        v.options = {"qp": "0"}
        a = c.add_stream("aac", rate=sr)
        a.layout = "mono"
        for t, fr in enumerate(frames):
            yuv = av.VideoFrame.from_ndarray(fr, format="rgb24").reformat(format="yuv420p").to_ndarray()
            vf = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            vf.pts = t  # in the stream's time base, 1 / fps
            for pkt in v.encode(vf):
                c.mux(pkt)
        for pkt in v.encode():
            c.mux(pkt)
        af = av.AudioFrame.from_ndarray(wave[None, :], format="fltp", layout="mono")
        af.sample_rate = sr
        for pkt in a.encode(af):
            c.mux(pkt)
        for pkt in a.encode():
            c.mux(pkt)


def generate(root: Path, n_clips: int = 600, seed: int = 0, audio_confusion: float = 0.0,
             video_noise: float = 0.25, audio_noise: float = 0.3, test_fraction: float = 0.25,
             chords: int = 5, train_chords: int | None = None) -> Path:
    """Write the demo videos and split lists under ``root`` (deterministic in ``seed``); returns root.

    ``train_chords`` (default ``chords``): how many distinct chords the training clips use. With 10 the
    audio of every training clip names its class (audio explains the training set alone, as a memorised
    audio track does on CREMA-D) while test clips keep ``chords`` (c and c + 5 share one).
    """
    root = Path(root)
    done = root / "COMPLETE"
    train_chords = train_chords or chords
    stamp = f"{n_clips} {seed} {audio_confusion} {video_noise} {audio_noise} {test_fraction} {chords}"
    stamp += f" {train_chords}" if train_chords != chords else ""
    if done.exists() and done.read_text() == stamp:
        return root
    writable_dir(root, "demo clip folder")  # PyAV's own PermissionError does not name the file
    rng = np.random.default_rng(seed)
    images, targets = _digit_images()
    by_class = [np.flatnonzero(targets == c) for c in range(10)]
    labels, is_test = balanced_split(rng, n_clips, test_fraction)
    # Train and test clips draw from disjoint halves of each class's handwritten digits.
    lines = {"train": [], "test": []}
    for i, c in enumerate(labels):
        pool = by_class[c]
        half = len(pool) // 2
        img = images[rng.choice(pool[half:] if is_test[i] else pool[:half])]
        audio_cls = c if rng.random() >= audio_confusion else int(rng.choice([k for k in range(10) if k != c]))
        name = f"{CLASS_NAMES[c]}/clip{i:04d}"
        chord = audio_cls % (chords if is_test[i] else train_chords)
        write_mp4(root / f"{name}.mp4", _video(rng, img, video_noise), _audio(rng, chord, audio_noise))
        lines["test" if is_test[i] else "train"].append(name)
    return finish_generated(root, lines, done, stamp)


def balanced_split(rng: np.random.Generator, n_clips: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(labels, is_test), each (n_clips,): the 10 classes in turn, shuffled by ``rng``; the first
    ``test_fraction`` of each class's clips go to test."""
    labels = np.arange(n_clips) % 10
    rng.shuffle(labels)
    is_test = np.zeros(n_clips, dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        is_test[idx[: int(round(test_fraction * len(idx)))]] = True
    return labels, is_test


def finish_generated(root: Path, lines: dict[str, list[str]], done: Path, stamp: str) -> Path:
    """Write ``splits/{train,test}.txt`` of a generated set, then its completion stamp (last: an interrupted
    generation is redone)."""
    (root / "splits").mkdir(exist_ok=True)
    for split, names in lines.items():
        (root / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n")
    done.write_text(stamp)
    return root


@source("demo", generated=True)
def demo_source(root: Path | None = None, n_clips: int = 600, seed: int = 0, **_) -> Source:
    """Generate (once) and list the demo clips; ``root`` defaults to ``<workspace>/raw/demo``."""
    return _demo("demo", root, dict(n_clips=n_clips, seed=seed))


@source("demo-shortcut", generated=True)
def demo_shortcut_source(root: Path | None = None, n_clips: int = 600, seed: int = 0, **_) -> Source:
    """The demo with a stronger imbalance, the regime of the paper's CREMA-D: on the training clips each
    class has its own chord, so audio alone fits the training set and starves video; on test, classes
    c and c + 5 share a chord as in the demo, so only a model that also learned video does well."""
    return _demo("demo-shortcut", root, dict(n_clips=n_clips, seed=seed, train_chords=10))


def _demo(name: str, root: Path | None, kwargs: dict) -> Source:
    return list_generated(name, root, lambda r: generate(r, **kwargs), DEMO_PARAMS)


def list_generated(name: str, root: Path | None, make, params: dict) -> Source:
    """Generate (``make(root)``, once) and list a generated source's clips from its ``splits/{train,test}.txt``;
    the class is the clip's folder (a ``CLASS_NAMES`` entry); ``params``: the source's cache defaults."""
    if root is None:
        raise MmvidError(f"{name} source needs a folder to write its videos into")
    make(Path(root))
    clips = []
    for split in ("train", "test"):
        for clip in (Path(root) / "splits" / f"{split}.txt").read_text().split():
            cls = CLASS_NAMES.index(clip.split("/")[0])
            clips.append(ClipSpec(name=clip, label=cls, split=split, video=Path(root) / f"{clip}.mp4"))
    return Source(name, CLASS_NAMES, clips, params=dict(params))
