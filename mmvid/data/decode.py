"""Decoding backends: frames with decord by default, PyAV as the fallback when decord fails on a
file; audio with PyAV (see ``decode_audio``).

Both return RGB uint8 frames of shape (T, H, W, 3) and mono float32 audio at the requested
sample rate. Every file is first probed with PyAV (header only), which raises Python errors on
unreadable files before decord (which can abort the process on some broken inputs) touches them.

* Multi-stream files: the first video and the first audio stream are used. decord always picks
  the "best" stream, so files with more than one stream of a kind are decoded with PyAV.
* Any channel count is down-mixed to mono, any sample rate resampled.
* Variable frame rate: frames are chosen by their presentation time, not by index.
* Rotation metadata (display matrix): frames are turned as a player shows them (decord does
  this itself; the PyAV path applies ``frame.rotation``).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from mmvid.errors import MmvidError


class DecodeError(MmvidError):
    """A single clip could not be decoded; prepare reports and skips it."""


class NoAudioError(DecodeError):
    """The file has no audio stream."""


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    duration: float
    backend: str
    indices: np.ndarray | None = None  # (T,) the chosen frames, in decode order


@dataclass
class Probe:
    """What the container header says, read with PyAV without decoding frames."""

    video_streams: int
    audio_streams: int
    duration: float  # seconds, 0.0 when the container does not say


# ----------------------------------------------------------------------------- decoder log

MAX_LOG_LINES = 20  # distinct messages kept per clip; a broken file can repeat one per frame
_ADDRESS = re.compile(r" @ 0x[0-9a-fA-F]+")


@contextmanager
def decoder_log() -> Iterator[list[str]]:
    """Collect what the decoders' C libraries print while the block runs, instead of the terminal.

    FFmpeg (inside decord, and PyAV when its logging is on) writes its messages, such as
    ``[mjpeg @ 0x55d0c8] Picture size 65000x65000 is invalid``, straight to file descriptor 2, past
    ``sys.stderr``; so descriptor 2 itself points at a temporary file during the block. The list yielded
    is filled when the block ends: each distinct message once (the object addresses removed), with
    ``(N times)`` when repeated, at most ``MAX_LOG_LINES`` of them. Meant for one clip at a time in a
    process that decodes (prepare's workers, or prepare itself with one worker).
    """
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(summarize_log(tmp.read().decode("utf-8", errors="replace")))


def summarize_log(text: str) -> list[str]:
    """Distinct non-empty lines of ``text`` in order of appearance, without ``@ 0x...`` addresses, each
    with its count when above 1; at most ``MAX_LOG_LINES`` and a line saying how many more there were."""
    counts = Counter(_ADDRESS.sub("", ln).strip() for ln in text.splitlines())
    counts.pop("", None)
    out = [f"{ln} ({n} times)" if n > 1 else ln for ln, n in counts.items()]
    if len(out) > MAX_LOG_LINES:
        out = out[:MAX_LOG_LINES] + [f"... and {len(out) - MAX_LOG_LINES} other messages"]
    return out


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def probe(path: str | Path) -> Probe:
    """Open the container header; DecodeError when it is unreadable or has nothing to decode."""
    import av  # PyAV and decord load only for the decoder a cache asks for (decoder=pyav|decord)

    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"file not found: {path}")
    if path.stat().st_size == 0:
        raise DecodeError("file is empty (0 bytes)")
    try:
        with av.open(str(path)) as c:
            dur = float(c.duration) / 1e6 if c.duration else 0.0
            return Probe(len(c.streams.video), len(c.streams.audio), dur)
    except Exception as e:
        raise DecodeError(f"unreadable container: {_first_line(e)}") from None


def select_indices(num_frames: int, native_fps: float, num_out: int, sample_fps: float | None,
                   select: str = "uniform", anchor: str = "centre") -> np.ndarray:
    """Frame indices for a constant-rate clip: the frames shown at ``select_times`` (see there)."""
    if num_frames <= 0:
        raise DecodeError("clip has no frames")
    if not (sample_fps and native_fps > 0):
        return select_from_times(np.arange(num_frames, dtype=np.float64), num_out, None, select, anchor)
    return select_from_times(np.arange(num_frames) / native_fps, num_out, sample_fps, select, anchor)


def pick_candidates(n: int, num_out: int, select: str = "uniform") -> np.ndarray:
    """Which ``num_out`` of ``n`` candidate frames (one per 1/fps period, in time order) a clip keeps.

    * ``uniform`` (mmvid): the centre of each of ``num_out`` equal segments, floor((i + 0.5) n / T).
    * ``ogm-ge``: i * floor(n / T), OGM-GE's ``dataset/dataset.py`` (Kinetics-Sounds, AVE: ``t = seg * i + 1``
      of 1-based file names); with T = 1 the first frame, the one ``CramedDataset`` reads (its
      ``select_index`` is drawn but unused, and it opens ``image_samples[0]``).
    * ``remix``: min(i * seg + floor(seg / 2), n - 1) with seg = floor(n / T), Remix's ``AV_CD_Dataset``
      at test time. (In training it draws a random index of each segment every epoch, which a cache of
      fixed frames cannot; on CREMA-D's 2-3 one-second frames with T = 2 each segment is one frame, so
      both give frames 0 and 1.)

    Fewer candidates than ``num_out`` repeat frames, as each reference's index rule does.
    """
    i = np.arange(num_out)
    if select == "uniform":
        pick = ((i + 0.5) * n / num_out).astype(np.int64)
    elif select == "ogm-ge":
        pick = i * (n // num_out)
    elif select == "remix":
        seg = n // num_out
        pick = i * seg + seg // 2
    else:
        raise ValueError(f"unknown frame selection {select!r}")
    return np.minimum(pick, n - 1)


def select_from_times(times: np.ndarray, num_out: int, sample_fps: float | None, select: str = "uniform",
                      anchor: str = "centre") -> np.ndarray:
    """Indices of ``num_out`` frames given each frame's presentation time in seconds (n,), increasing.

    The clip is resampled to ``sample_fps`` (1 fps in the paper): period k keeps the frame shown at its
    centre (k + 0.5) / sample_fps (``anchor="centre"``) or at its start k / sample_fps (``"start"``), i.e.
    the last frame whose time is <= that instant, so a variable-rate clip is sampled by time, not by frame
    count. ``num_out`` of these candidates are then picked by ``select`` (``pick_candidates``;
    deterministic, as the reference implementations are at test time). Clips with fewer candidates
    repeat frames. ``sample_fps=None`` keeps every frame as a candidate.
    """
    n = len(times)
    if n <= 0:
        raise DecodeError("clip has no frames")
    if sample_fps:
        t = np.asarray(times, dtype=np.float64)
        step = float(np.median(np.diff(t))) if n > 1 else 1.0 / sample_fps
        duration = t[-1] - t[0] + step
        offset = 0.5 if anchor == "centre" else 0.0
        instants = t[0] + (np.arange(max(int(np.ceil(duration * sample_fps - 1e-9)), 1)) + offset) / sample_fps
        candidates = np.unique(np.clip(np.searchsorted(t, instants + 1e-9, side="right") - 1, 0, n - 1))
    else:
        candidates = np.arange(n)
    return candidates[pick_candidates(len(candidates), num_out, select)]


def frame_times(raw: np.ndarray | list, fps: float) -> np.ndarray:
    """Presentation times of the decoded frames: the container's when they are trustworthy (finite and
    strictly increasing in display order, which variable-rate files need), else ``index / fps``
    (AVI has no presentation times; demuxers then guess them, sometimes out of order or missing)."""
    t = np.asarray([np.nan if v is None else v for v in raw], dtype=np.float64)
    if len(t) and np.isfinite(t).all() and (np.diff(t) > 0).all() and t[0] > -1e6:
        return t
    return np.arange(len(t)) / (fps if fps > 0 else 1.0)


def _rotate(frames: np.ndarray, rotation: float) -> np.ndarray:
    """Turn (T, H, W, C) frames counter-clockwise by the display matrix angle, as players do."""
    k = int(round(rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(frames, k, axes=(1, 2))) if k else frames


def _info(n: int, fps: float, times: np.ndarray, backend: str, idx: np.ndarray) -> VideoInfo:
    return VideoInfo(n, fps, float(times.max() - times.min()) + (1 / fps if fps else 0.0), backend, idx)


def _hw(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """A frame size as (height, width): an int is a square; None keeps the native size."""
    if not size:
        return None
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def _decord_reader(path: Path, size: int | tuple[int, int] | None):
    import decord  # decord and PyAV load only for the decoder a cache asks for (decoder=decord|pyav)

    hw = _hw(size)
    if hw:
        return decord.VideoReader(str(path), width=hw[1], height=hw[0], num_threads=1)
    return decord.VideoReader(str(path), num_threads=1)


def _decord_frames(path: Path, num_out: int, sample_fps: float | None, size: int | tuple[int, int] | None,
                   offsets: tuple[int, ...], select: str = "uniform", anchor: str = "centre") -> tuple[np.ndarray, VideoInfo]:
    vr = _decord_reader(path, size)
    n, fps = len(vr), float(vr.get_avg_fps())
    if n <= 0:
        raise DecodeError("clip has no frames")
    times = frame_times(vr.get_frame_timestamp(np.arange(n))[:, 0], fps)
    idx = select_from_times(times, num_out, sample_fps, select, anchor)
    want = np.concatenate([np.minimum(idx + o, n - 1) for o in offsets])
    frames = vr.get_batch(list(want)).asnumpy()
    return frames, _info(n, fps, times, "decord", idx)


def _pyav_frames(path: Path, num_out: int, sample_fps: float | None, size: int | tuple[int, int] | None,
                 offsets: tuple[int, ...], select: str = "uniform", anchor: str = "centre") -> tuple[np.ndarray, VideoInfo]:
    import av  # PyAV and decord load only for the decoder a cache asks for (decoder=pyav|decord)

    # Two passes, so memory holds only the chosen frames: times first, then the frames themselves.
    with av.open(str(path)) as c:
        if not c.streams.video:
            raise DecodeError("no video stream")
        stream = c.streams.video[0]  # the first video stream, whatever decord would choose
        raw_times = [f.time for f in c.decode(stream)]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    n = len(raw_times)
    if n == 0:
        raise DecodeError("clip has no frames")
    times = frame_times(raw_times, fps)
    idx = select_from_times(times, num_out, sample_fps, select, anchor)
    want = np.concatenate([np.minimum(idx + o, n - 1) for o in offsets])
    wanted = set(want.tolist())
    kept: dict[int, np.ndarray] = {}
    rotation = 0.0
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(c.streams.video[0])):
            if i in wanted:
                rotation = f.rotation or 0.0
                hw = _hw(size)
                if hw and int(round(rotation / 90.0)) % 2:  # turned a quarter after scaling: scale to the turned shape
                    hw = hw[::-1]
                kept[i] = f.to_ndarray(width=hw[1], height=hw[0], format="rgb24") if hw else f.to_ndarray(format="rgb24")
            if i >= want.max():
                break
    if len(kept) != len(wanted):
        raise DecodeError(f"second decoding pass found {len(kept)} of {len(wanted)} chosen frames")
    frames = _rotate(np.stack([kept[i] for i in want]), rotation)
    return frames, _info(n, fps, times, "pyav", idx)


def decord_available() -> bool:
    """Whether decord can be imported. It publishes wheels for some platforms only (pyproject.toml installs it
    under an environment marker); where it is missing, frames decode with PyAV, which reads everything mmvid needs."""
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def decode_frames(path: str | Path, num_out: int, sample_fps: float | None, size: int | tuple[int, int] | None,
                  backend: str = "decord", offsets: tuple[int, ...] = (0,),
                  min_seconds: float = 0.0, select: str = "uniform", anchor: str = "centre") -> tuple[np.ndarray, VideoInfo]:
    """(len(offsets) * T, H, W, 3) uint8 RGB frames and stream info.

    The T chosen frames (``select``, ``anchor``: ``select_from_times``) come first; with ``offsets=(0, 1)``
    the T frames right after them follow (the pairs optical flow needs). ``size``: (H, W), an int for a
    square, or None to keep the native resolution. Falls back to PyAV
    when decord fails or cannot be imported, and uses PyAV directly for files with several video streams.
    """
    path = Path(path)
    pr = probe(path)
    if pr.video_streams == 0:
        raise DecodeError("no video stream")
    order = [backend] + [b for b in ("decord", "pyav") if b != backend]
    if pr.video_streams > 1 or not decord_available():
        order = ["pyav"]
    errors = []
    for name in order:
        try:
            fn = _decord_frames if name == "decord" else _pyav_frames
            frames, info = fn(path, num_out, sample_fps, size, offsets, select, anchor)
            if frames.ndim != 4 or frames.shape[0] != num_out * len(offsets):
                raise DecodeError(f"decoded frames have shape {frames.shape}")
        except Exception as e:  # each backend raises its own exception types
            errors.append(f"{name}: {_first_line(e)}")
            continue
        if info.duration < min_seconds:
            raise DecodeError(f"too short: {info.num_frames} frame(s), {info.duration:.2f} s of video (< min_seconds {min_seconds})")
        return frames, info
    raise DecodeError(f"cannot decode video ({'; '.join(errors)})")


def _pyav_audio(path: Path, sr: int) -> np.ndarray:
    import av  # PyAV and decord load only for the decoder a cache asks for (decoder=pyav|decord)

    with av.open(str(path)) as c:
        if not c.streams.audio:
            raise NoAudioError("no audio stream")
        stream = c.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks = []
        for frame in c.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        raise NoAudioError("audio stream is empty")
    return np.concatenate(chunks).astype(np.float32)


def has_audio_stream(path: str | Path) -> bool:
    try:
        return probe(path).audio_streams > 0
    except DecodeError:
        return False


def decode_audio(path: str | Path, sr: int, resample: str = "soxr_hq") -> np.ndarray:
    """Mono float32 waveform at ``sr`` Hz from a wav/mp3 file (librosa) or a video's first audio stream (PyAV).

    ``resample``: librosa's resampler for wav/flac/ogg files (``soxr_hq``, librosa >= 0.10's default, or
    ``kaiser_best``, the default of the older librosa the 2022 reference code ran, which needs resampy);
    a video's audio goes through PyAV's (libswresample's) resampler, as ffmpeg's wav extraction does.

    PyAV only. decord's ``AudioReader`` leaks about the size of the decoded waveform on every call
    (about 230 KB for a 2.5 s clip; PyAV: nothing measurable), which made ``prepare``'s memory grow
    with the number of clips; it also down-mixes differently from PyAV on the real stereo clips of the
    test data. mmvid's caches never held decord audio: the former decord call (``.asnumpy()`` on an
    ``AudioReader``, which has none) always raised and fell back to PyAV, after decoding in vain.
    """
    path = Path(path)
    if path.suffix.lower() in (".wav", ".flac", ".ogg"):
        import librosa  # seconds to import (numba): loaded only for audio files (.wav, .flac, .ogg)

        if resample == "kaiser_best":
            try:
                import resampy  # noqa: F401  (librosa's kaiser_* resamplers)
            except ImportError:
                raise MmvidError("prepare parameter resample=kaiser_best needs the resampy package: "
                                 "pip install resampy") from None
        try:
            wave, _ = librosa.load(str(path), sr=sr, mono=True, res_type=resample)
        except Exception as e:
            raise DecodeError(f"cannot read audio: {e}") from None
        if wave.size == 0:
            raise NoAudioError("audio file has no samples")
        return wave.astype(np.float32)
    if probe(path).audio_streams == 0:
        raise NoAudioError("no audio stream")
    try:
        wave = _pyav_audio(path, sr)
    except NoAudioError:
        raise
    except Exception as e:
        raise DecodeError(f"cannot decode audio (pyav: {_first_line(e)})") from None
    if wave.size == 0:
        raise NoAudioError("audio stream is empty")
    return wave
