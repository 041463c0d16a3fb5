"""Decoding backends: decord by default, PyAV as the fallback when decord fails on a file.

Both return RGB uint8 frames of shape (T, H, W, 3) and mono float32 audio at the requested
sample rate. Multi-stream files use the first video and the first audio stream; any channel
count is down-mixed, any sample rate is resampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


def select_indices(num_frames: int, native_fps: float, num_out: int, sample_fps: float | None) -> np.ndarray:
    """Frame indices: resample to ``sample_fps`` (1 fps in the paper), then pick ``num_out`` uniformly.

    Each chosen index is the centre of one of ``num_out`` equal segments (deterministic, as the
    reference implementations do at test time). Clips with fewer candidates repeat frames.
    """
    if num_frames <= 0:
        raise DecodeError("clip has no frames")
    if sample_fps and native_fps > 0:
        step = native_fps / sample_fps
        candidates = np.arange(0.0, num_frames, step)
        candidates = np.minimum(np.round(candidates + step / 2 - 0.5), num_frames - 1).astype(np.int64)
        candidates = np.unique(candidates)
    else:
        candidates = np.arange(num_frames)
    pos = (np.arange(num_out) + 0.5) * len(candidates) / num_out
    return candidates[np.minimum(pos.astype(np.int64), len(candidates) - 1)]


def _decord_frames(path: Path, num_out: int, sample_fps: float | None, size: int) -> tuple[np.ndarray, VideoInfo]:
    import decord

    vr = decord.VideoReader(str(path), width=size, height=size, num_threads=1)
    n, fps = len(vr), float(vr.get_avg_fps())
    idx = select_indices(n, fps, num_out, sample_fps)
    frames = vr.get_batch(list(idx)).asnumpy()
    return frames, VideoInfo(n, fps, n / fps if fps else 0.0, "decord")


def _pyav_frames(path: Path, num_out: int, sample_fps: float | None, size: int) -> tuple[np.ndarray, VideoInfo]:
    import av

    with av.open(str(path)) as c:
        if not c.streams.video:
            raise DecodeError("no video stream")
        stream = c.streams.video[0]
        decoded = [f.to_ndarray(width=size, height=size, format="rgb24") for f in c.decode(stream)]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    n = len(decoded)
    idx = select_indices(n, fps, num_out, sample_fps)
    return np.stack([decoded[i] for i in idx]), VideoInfo(n, fps, n / fps if fps else 0.0, "pyav")


def decode_frames(path: str | Path, num_out: int, sample_fps: float | None, size: int, backend: str = "decord") -> tuple[np.ndarray, VideoInfo]:
    """(T, size, size, 3) uint8 RGB frames and stream info; falls back to PyAV when decord fails."""
    path = Path(path)
    order = [backend] + [b for b in ("decord", "pyav") if b != backend]
    errors = []
    for name in order:
        try:
            fn = _decord_frames if name == "decord" else _pyav_frames
            frames, info = fn(path, num_out, sample_fps, size)
            if frames.ndim != 4 or frames.shape[0] != num_out:
                raise DecodeError(f"decoded frames have shape {frames.shape}")
            return frames, info
        except Exception as e:  # each backend raises its own exception types
            errors.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    raise DecodeError(f"cannot decode video ({'; '.join(errors)})")


def _pyav_audio(path: Path, sr: int) -> np.ndarray:
    import av

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
    import av

    try:
        with av.open(str(path)) as c:
            return bool(c.streams.audio)
    except Exception:
        return False


def decode_audio(path: str | Path, sr: int, backend: str = "decord") -> np.ndarray:
    """Mono float32 waveform at ``sr`` Hz from a wav/mp3 file or a video's first audio stream."""
    path = Path(path)
    if path.suffix.lower() in (".wav", ".flac", ".ogg"):
        import librosa

        try:
            wave, _ = librosa.load(str(path), sr=sr, mono=True)
        except Exception as e:
            raise DecodeError(f"cannot read audio: {e}") from None
        return wave.astype(np.float32)
    if not has_audio_stream(path):
        raise NoAudioError("no audio stream")
    errors = []
    order = [backend] + [b for b in ("decord", "pyav") if b != backend]
    for name in order:
        try:
            if name == "decord":
                import decord

                wave = decord.AudioReader(str(path), sample_rate=sr, mono=True).asnumpy().reshape(-1)
            else:
                wave = _pyav_audio(path, sr)
            if wave.size == 0:
                raise DecodeError("audio stream is empty")
            return wave.astype(np.float32)
        except NoAudioError:
            raise
        except Exception as e:
            errors.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    raise DecodeError(f"cannot decode audio ({'; '.join(errors)})")
