"""The proving ground: a generated data set in the regime of the paper's Fig. 1, sized for a CPU.

In the paper's regime audio, the strong modality, *memorises* the training set (its unimodal train
accuracy goes far above its test accuracy) while video, the weak one, stays *under-trained* (its
train accuracy close to its test accuracy, both low). The demo shows the opposite (its small video
encoder memorises 410 clips), so this source builds the regime in, with 2,000 clips of 10 classes:

* **audio = a weak class cue + a melody heard only in training.** The class cue is a quiet three-tone
  chord (root, major third, fifth; roots ``CHORD_ROOTS``) that classes c and c + 5 share, so audio alone
  is capped at 50 % on test. On top, louder, every clip plays a *melody*: ``NOTES`` notes of
  ``1 / NOTES`` s each, at random frequencies. The training clips of a class share one melody per group
  of ``MELODY_SHARE`` (:func:`melody_ids`); every test clip plays a melody of its own. A melody tells
  nothing about the class on unseen clips, but the audio encoder can learn the training melodies by heart
  and so tell c from c + 5 on them: that memorisation takes its train accuracy towards 100 % while its
  test accuracy stays near 50 %. (With a melody per clip, ``MELODY_SHARE`` 1, memorising 1,500 melodies
  was slower than video's learning, and the fused model then fitted the training set through video.)
* **video = a class cue that generalises but is learned slowly.** A real handwritten digit of the
  class (the UCI 8x8 digits bundled with scikit-learn, as in :mod:`mmvid.data.sources.demo`; train and test
  clips use disjoint halves of each class's digits) at low contrast, at a new random place in each of
  the three 16x16 frames, over strong grey per-frame noise. It is the only cue that tells
  c from c + 5 on test, and is slow to learn, so a fused model that fits the training set through the
  audio melodies first leaves video under-trained.
* **small inputs**, so that one training run of ``recipes/proving.yaml`` takes well under a minute on
  one CPU thread: 1 s clips, 3 frames at 3 fps, 16x16 px; 8 kHz audio with n_fft 128 and hop 256, a
  65 x 32 log spectrogram.

The clips are real mp4 files (H.264 + AAC, written by :func:`mmvid.data.sources.demo.write_mp4`) under
``<workspace>/raw/proving/<class>/<clip>.mp4`` with ``splits/{train,test}.txt``, read back through the
same decode -> features -> cache path as real data; everything is deterministic in ``seed``.
:func:`mmvid.results.evaluation.regime` measures whether a run shows the regime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmvid.data.sources.base import Source, source
from mmvid.data.sources.demo import (
    CLASS_NAMES,
    _digit_images,
    balanced_split,
    finish_generated,
    list_generated,
    write_mp4,
)
from mmvid.workspace import writable_dir

FPS = 3
SECONDS = 1.0
SIZE = 16
SR = 8000  # the lowest AAC rate that keeps the melody band (250-3,500 Hz) below Nyquist
N_FFT, HOP = 128, 256  # 62.5 Hz bins; 1 + 8000 // 256 = 32 frames
NOTES = 8  # melody notes per clip, 0.125 s (4 spectrogram frames) each
MELODY_BAND = (250.0, 3500.0)  # Hz
# One chord per class pair (c, c + 5), roots on bins 6, 10, 14, 18, 22: every partial of every chord
# (x1, x1.25, x1.5, the top at 2,062 Hz) falls in its own 62.5 Hz bin.
CHORD_ROOTS = 62.5 * np.array([6, 10, 14, 18, 22])
CHORD_RATIOS = (1.0, 1.25, 1.5)
CHORD_AMP, MELODY_AMP, AUDIO_NOISE = 0.1, 0.3, 0.05
MELODY_SHARE = 8  # training clips of one class per melody (each test clip has a melody of its own)
DIGIT_CONTRAST, VIDEO_NOISE = 0.4, 0.2

PROVING_PARAMS = dict(fps=None, num_frames=int(FPS * SECONDS), image_size=SIZE, sample_rate=SR,
                      clip_seconds=SECONDS, n_fft=N_FFT, hop=HOP, tile_audio=True)


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of clip ``index``: independent of every other clip and of the generation order."""
    return np.random.default_rng([seed, index])


def chord_partials(cls: int) -> np.ndarray:
    """(3,) Hz: the class cue of class ``cls`` (shared by ``cls`` and ``cls + 5``)."""
    return CHORD_ROOTS[cls % 5] * np.asarray(CHORD_RATIOS)


def melody_notes(seed: int, melody: int) -> np.ndarray:
    """(NOTES,) Hz: melody number ``melody`` (see :func:`melody_ids`), from its own random stream."""
    return np.random.default_rng([seed, melody, 1]).uniform(*MELODY_BAND, size=NOTES)


def melody_ids(labels: np.ndarray, is_test: np.ndarray, share: int = MELODY_SHARE) -> np.ndarray:
    """(n_clips,) int: the melody of each clip, named by the first clip that sounds it. The training
    clips of each class, in index order, share one melody per group of ``share``; a test clip has its own."""
    ids = np.arange(len(labels))
    for c in range(10):
        train = np.flatnonzero((labels == c) & ~is_test)
        ids[train] = train[(np.arange(len(train)) // share) * share]
    return ids


def audio(rng: np.random.Generator, cls: int, notes: np.ndarray) -> np.ndarray:
    """(SR * SECONDS,) float32 in [-1, 1]: CHORD_AMP * chord(cls) + MELODY_AMP * melody(notes) + noise."""
    t = np.arange(int(SR * SECONDS)) / SR
    chord = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in chord_partials(cls)) / 3
    seg = len(t) // NOTES
    melody = np.zeros_like(t)
    for k, f in enumerate(notes):
        part = slice(k * seg, (k + 1) * seg)
        melody[part] = np.sin(2 * np.pi * f * t[part] + rng.uniform(0, 2 * np.pi))
    wave = CHORD_AMP * chord + MELODY_AMP * melody + rng.normal(0, AUDIO_NOISE, size=t.shape)
    return np.clip(wave, -1, 1).astype(np.float32)


def video(rng: np.random.Generator, digit: np.ndarray) -> np.ndarray:
    """(FPS * SECONDS, SIZE, SIZE, 3) uint8: the 8x8 ``digit`` (values 0-1) at DIGIT_CONTRAST, at a new
    random place in each frame, over N(0.4, VIDEO_NOISE) noise, grey."""
    n, h = int(FPS * SECONDS), digit.shape[0]
    frames = np.empty((n, SIZE, SIZE, 3), dtype=np.float32)
    for k in range(n):
        y, x = rng.integers(0, SIZE - h + 1, size=2)
        img = rng.normal(0.4, VIDEO_NOISE, size=(SIZE, SIZE)).astype(np.float32)
        img[y:y + h, x:x + h] += DIGIT_CONTRAST * digit
        frames[k] = img[..., None]  # grey: a per-clip tint would be a signature easy to memorise
    return (np.clip(frames, 0, 1) * 255).astype(np.uint8)


def layout(n_clips: int, seed: int, test_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """(labels, is_test), each (n_clips,): classes balanced, ``test_fraction`` of each class in test."""
    return balanced_split(np.random.default_rng([seed, n_clips]), n_clips, test_fraction)


def clip_arrays(seed: int, index: int, cls: int, test: bool, melody: int, images: np.ndarray,
                by_class: list[np.ndarray]):
    """(frames, wave, notes) of clip ``index``; train and test clips draw disjoint halves of the digits."""
    rng = clip_rng(seed, index)
    notes = melody_notes(seed, melody)
    pool = by_class[cls]
    half = len(pool) // 2
    digit = images[rng.choice(pool[half:] if test else pool[:half])]
    return video(rng, digit), audio(rng, cls, notes), notes


def generate(root: Path, n_clips: int = 2000, seed: int = 0) -> Path:
    """Write the clips and split lists under ``root`` (deterministic in ``seed``); returns root."""
    root = Path(root)
    done = root / "COMPLETE"
    stamp = f"proving {n_clips} {seed} share {MELODY_SHARE}"
    if done.exists() and done.read_text() == stamp:
        return root
    writable_dir(root, "proving clip folder")
    images, targets = _digit_images()
    by_class = [np.flatnonzero(targets == c) for c in range(10)]
    labels, is_test = layout(n_clips, seed)
    melodies = melody_ids(labels, is_test)
    lines = {"train": [], "test": []}
    for i, c in enumerate(labels):
        frames, wave, _ = clip_arrays(seed, i, int(c), bool(is_test[i]), int(melodies[i]), images, by_class)
        name = f"{CLASS_NAMES[c]}/clip{i:04d}"
        write_mp4(root / f"{name}.mp4", frames, wave, fps=FPS, sr=SR)
        lines["test" if is_test[i] else "train"].append(name)
    return finish_generated(root, lines, done, stamp)


@source("proving", generated=True)
def proving_source(root: Path | None = None, n_clips: int = 2000, seed: int = 0, **_) -> Source:
    """Generate (once) and list the proving-ground clips; ``root`` defaults to ``<workspace>/raw/proving``."""
    return list_generated("proving", root, lambda r: generate(r, n_clips=n_clips, seed=seed), PROVING_PARAMS)
