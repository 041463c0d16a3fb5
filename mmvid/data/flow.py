"""Optical flow and precomputed frame folders for ``prepare``.

One quantisation for every source (the denseflow / TV-L1 JPEG convention, so precomputed frames
are stored unchanged): flow f in pixels per frame, bound B = ``flow_bound`` (20 by default)::

    q = clip(round(f * 255 / (2B)) + 128, 0, 255)        f = (q - 128) * 2B / 255

so 128 is exactly zero motion and f is clipped to [-20.08, 19.92] px/frame for B = 20.

* ``--flow precomputed``: ``x_%05d.jpg`` / ``y_%05d.jpg`` grayscale frames (u and v) in the
  clip's frame folder, written with the same bound (denseflow's default 20). They are sampled
  like the RGB frames, over the folder's own frames, and resized with their values unchanged
  (as the reference loaders do).
* ``--flow farneback`` / ``--flow dis``: computed with OpenCV between each chosen frame t and
  frame t + 1 of the video at its native resolution, then resized the same way, so computed and
  precomputed flow are in the same units (pixels of the original video per frame).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mmvid.data.decode import DecodeError, decode_frames, select_from_times
from mmvid.data.params import PrepareParams
from mmvid.data.sources.base import ClipSpec
from mmvid.errors import MmvidError

COMPUTED = ("farneback", "dis")
ZERO = 128


def quantise_flow(flow: np.ndarray, bound: float) -> np.ndarray:
    """float (..., 2) pixels/frame -> uint8 (..., 2) with 128 = zero (see the module docstring)."""
    q = np.rint(np.asarray(flow, dtype=np.float32) * (255.0 / (2 * bound))) + ZERO
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantise_flow(q: np.ndarray, bound: float) -> np.ndarray:
    """uint8 (..., 2) -> float32 pixels/frame; the inverse of ``quantise_flow`` up to its step 2B/255."""
    return (np.asarray(q, dtype=np.float32) - ZERO) * (2 * bound / 255.0)


def _cv2():
    try:
        import cv2  # OpenCV is needed only to compute flow: its absence is an error here, not at import
    except ImportError:
        raise MmvidError("computed optical flow needs OpenCV: pip install opencv-python-headless "
                         "(or use --flow precomputed / --flow none)") from None
    return cv2


def _numbered(folder: Path, prefix: str) -> list[Path]:
    pat = re.compile(rf"^{prefix}_(\d+)\.jpe?g$", re.IGNORECASE)
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pat.match(p.name))]
    return [p for _, p in sorted(found)]


def _pick(n: int, p: "PrepareParams") -> np.ndarray:
    """Frames of a folder are sampled like a video's, at the folder's own rate ``frames_fps``."""
    if n == 0:
        raise DecodeError("frame folder is empty")
    return select_from_times(np.arange(n) / p.frames_fps, p.num_frames, p.fps, p.frame_select, p.frame_anchor)


def _read(path: Path, hw: tuple[int, int], gray: bool) -> np.ndarray:
    cv2 = _cv2()
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if img is None:
        raise DecodeError(f"cannot read image {path.name}")
    img = cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    return img if gray else img[..., ::-1]  # OpenCV reads BGR


def read_rgb_dir(folder: Path, p: "PrepareParams") -> np.ndarray:
    """(T, S, S, 3) uint8 RGB from a folder of ``img_%05d.jpg`` frames (used when a clip has no video)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DecodeError(f"frame folder not found: {folder}")
    files = _numbered(folder, "img")
    return np.stack([_read(files[i], p.frame_hw(), gray=False) for i in _pick(len(files), p)])


def read_flow_dir(folder: Path, p: "PrepareParams") -> np.ndarray:
    """(T, S, S, 2) uint8 quantised flow from ``x_%05d.jpg`` (u) and ``y_%05d.jpg`` (v), stored as is."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DecodeError(f"precomputed flow folder not found: {folder} (expected x_00001.jpg, y_00001.jpg, ...)")
    xs, ys = _numbered(folder, "x"), _numbered(folder, "y")
    if not xs or len(xs) != len(ys):
        raise DecodeError(f"{folder} has {len(xs)} x_*.jpg and {len(ys)} y_*.jpg flow frames; expected the same, non-zero number")
    idx = _pick(len(xs), p)
    return np.stack([np.stack([_read(xs[i], p.frame_hw(), True), _read(ys[i], p.frame_hw(), True)], -1) for i in idx])


def compute_flow(first: np.ndarray, second: np.ndarray, method: str) -> np.ndarray:
    """Dense flow (H, W, 2) float32 in pixels from RGB uint8 frame ``first`` (H, W, 3) to ``second``."""
    cv2 = _cv2()
    a = cv2.cvtColor(np.ascontiguousarray(first), cv2.COLOR_RGB2GRAY)
    b = cv2.cvtColor(np.ascontiguousarray(second), cv2.COLOR_RGB2GRAY)
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    if method == "dis":
        return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(a, b, None)
    raise ValueError(f"unknown flow method {method!r}")


def flow_from_video(video: Path, p: "PrepareParams") -> np.ndarray:
    """(T, S, S, 2) uint8: flow from each chosen frame t to t + 1, at native resolution, then resized."""
    cv2 = _cv2()
    pairs, _ = decode_frames(video, p.num_frames, p.fps, None, p.decoder, offsets=(0, 1), select=p.frame_select,
                             anchor=p.frame_anchor)
    t = p.num_frames
    out = []
    for first, second in zip(pairs[:t], pairs[t:]):
        f = compute_flow(first, second, p.flow)
        f = cv2.resize(f, p.frame_hw()[::-1], interpolation=cv2.INTER_AREA)
        out.append(quantise_flow(f, p.flow_bound))
    return np.stack(out)


def clip_flow(clip: "ClipSpec", p: "PrepareParams") -> np.ndarray:
    """(T, S, S, 2) uint8 flow of one clip by ``p.flow``: precomputed frames or computed from the video."""
    if p.flow == "precomputed":
        if clip.flow_dir is None:
            raise DecodeError("no precomputed flow folder for this clip")
        return read_flow_dir(clip.flow_dir, p)
    if clip.video is None:
        raise DecodeError("computed flow needs the video file")
    return flow_from_video(clip.video, p)
