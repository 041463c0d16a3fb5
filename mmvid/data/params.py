"""The parameters of ``prepare`` (decoding and features), each with the values it accepts.

Kept free of numpy/h5py/decoder imports so that a bad ``prepare`` option is rejected at once,
before any source is listed or generated and long before a decoder sees the value.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mmvid.schema import check_dataclass, check_value, field_types, spec

FLOW_METHODS = ("none", "precomputed", "farneback", "dis")  # mmvid.data.flow


@dataclass
class PrepareParams:
    """Every parameter of decoding and features; all are stored as cache attributes."""

    # resample frames to this rate before picking num_frames (paper: 1 fps); None = native
    fps: float | None = spec(1.0, gt=0.0, le=1000.0)
    num_frames: int = spec(3, ge=1, le=10_000)
    image_size: int = spec(224, ge=8, le=8192)
    sample_rate: int = spec(22050, ge=1000, le=384_000)  # 0 would crash the audio decoder (SIGFPE)
    clip_seconds: float = spec(3.0, gt=0.0, le=86_400.0)
    n_fft: int = spec(512, ge=16, le=65_536)
    hop: int = spec(353, ge=1, le=65_536)
    window: str = "hann"  # a librosa/scipy window name
    tile_audio: bool = True
    flow: str = spec("none", choices=FLOW_METHODS)
    flow_bound: float = spec(20.0, gt=0.0, le=1000.0)  # flow quantisation bound B in px/frame (also of precomputed x_/y_ jpgs)
    frames_fps: float = spec(25.0, gt=0.0, le=1000.0)  # frame rate of precomputed frame folders (img_/x_/y_%05d.jpg)
    missing_audio: str = spec("skip", choices=("skip", "zeros"))
    min_seconds: float = spec(0.5, ge=0.0, le=86_400.0)  # shorter videos are reported and skipped (half a period at 1 fps)
    decoder: str = spec("decord", choices=("decord", "pyav"))  # of frames; audio is always PyAV (decode_audio)
    normalisation: str = spec("imagenet", choices=("imagenet",))  # applied when reading frames; stored frames are raw RGB

    def __post_init__(self) -> None:
        check_dataclass(self, "prepare parameter ")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        from mmvid.data.features import spectrogram_shape

        s = self.image_size
        shapes: dict[str, tuple[int, ...]] = {
            "frames": (self.num_frames, s, s, 3),
            "spectrogram": spectrogram_shape(self.sample_rate, self.clip_seconds, self.n_fft, self.hop),
        }
        if self.flow != "none":
            shapes["flow"] = (self.num_frames, s, s, 2)
        return shapes

    @classmethod
    def build(cls, values: dict[str, Any], labels: dict[str, str] | None = None) -> "PrepareParams":
        """Checked params from ``values`` (unknown keys ignored); an error names the option (``labels``:
        param -> CLI flag) and what it accepts."""
        types_ = field_types(cls)
        out = {}
        for f in fields(cls):
            if f.name in values:
                label = (labels or {}).get(f.name) or f"prepare parameter {f.name}"
                out[f.name] = check_value(f, types_[f.name], values[f.name], label)
        return cls(**out)
