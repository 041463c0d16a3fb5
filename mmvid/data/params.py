"""The parameters of ``prepare`` (decoding and features), each with the values it accepts.

Kept free of numpy/h5py/decoder imports so that a bad ``prepare`` option is rejected at once,
before any source is listed or generated and long before a decoder sees the value.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mmvid.errors import MmvidError
from mmvid.schema import check_dataclass, check_value, field_types, spec

FLOW_METHODS = ("none", "precomputed", "farneback", "dis")  # mmvid.data.flow
# Which of the 1-fps frames a clip keeps (mmvid.data.decode.select_from_times; docs/methods.md,
# "Reference protocol (data)"): mmvid's centres of equal segments, OGM-GE's or Remix's index rule.
FRAME_SELECT = ("uniform", "ogm-ge", "remix")
FRAME_SIZES = ("square", "short-side")
AUDIO_FEATURES = ("stft", "fbank")  # mmvid.data.features
# librosa.load's resamplers mmvid offers: librosa >= 0.10's default, and the default of the older librosa the
# 2022 reference code ran (needs resampy). Only audio read from wav/flac/ogg files goes through librosa.
RESAMPLERS = ("soxr_hq", "kaiser_best")


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
    # The reference protocol's inputs (docs/methods.md, "Reference protocol (data)"). Each default is mmvid's own.
    # square: frames stored at image_size x image_size (squashed); short-side: image_size is the short side and the
    # stored frame is frame_aspect wide (CREMA-D's native 480x360: image_size 360), so data.crop=reference crops
    # from a frame of the reference's shape. Every clip is scaled to that one shape.
    frame_size: str = spec("square", choices=FRAME_SIZES)
    frame_aspect: float = spec(4 / 3, ge=0.25, le=4.0)  # width / height of short-side frames
    frame_select: str = spec("uniform", choices=FRAME_SELECT)
    # Where in each 1/fps period its frame is taken: the centre (mmvid; OGM-GE's video2frame-1fps.py for
    # Kinetics-Sounds and AVE) or the start (OGM-GE's CREMA-D video_preprocessing.py keeps frame k * int(fps)).
    frame_anchor: str = spec("centre", choices=("centre", "start"))
    jpeg_quality: int = spec(0, ge=0, le=100)  # > 0: each stored frame goes through a JPEG of this quality (reference: 95)
    audio_feature: str = spec("stft", choices=AUDIO_FEATURES)  # stft: log |STFT|; fbank: Kaldi log-mel filterbank
    n_mels: int = spec(128, ge=1, le=1024)  # fbank: mel bins
    fbank_frames: int = spec(1024, ge=1, le=1_000_000)  # fbank: 10 ms frames kept (zero-padded or cut)
    stft_pad: str = spec("constant", choices=("constant", "reflect"))  # stft: librosa >= 0.10's padding | older librosa's
    resample: str = spec("soxr_hq", choices=RESAMPLERS)  # librosa.load's resampler for audio files

    def __post_init__(self) -> None:
        check_dataclass(self, "prepare parameter ")

    def frame_hw(self) -> tuple[int, int]:
        """(height, width) of a stored frame."""
        return frame_hw(self.__dict__)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        # options are checked against these declarations before numpy loads (mmvid.config); features imports it
        from mmvid.data.features import audio_shape

        h, w = self.frame_hw()
        shapes: dict[str, tuple[int, ...]] = {
            "frames": (self.num_frames, h, w, 3),
            "spectrogram": audio_shape(self.__dict__),
        }
        if self.flow != "none":
            shapes["flow"] = (self.num_frames, h, w, 2)
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


def frame_hw(params: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of the frames a cache with these parameters stores (its attributes; a cache written
    before ``frame_size`` existed stores squares)."""
    s = int(params["image_size"])
    if params.get("frame_size", "square") == "square":
        return s, s
    aspect = float(params.get("frame_aspect", 4 / 3))
    return (s, max(1, round(s * aspect))) if aspect >= 1 else (max(1, round(s / aspect)), s)


def prepared_params(wanted: dict[str, Any]) -> PrepareParams:
    """``data.prepared`` checked: every key a prepare parameter, every value one it accepts (one line otherwise)."""
    names = [f.name for f in fields(PrepareParams)]
    unknown = [k for k in wanted if k not in names]
    if unknown:
        raise MmvidError(f"config data.prepared: unknown prepare parameter(s) {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(names)}")
    return PrepareParams.build(dict(wanted), {k: f"config data.prepared.{k}" for k in wanted})


def check_prepared(cache_params: dict[str, Any], wanted: dict[str, Any] | None, cache: str = "the cache") -> None:
    """Refuse a cache whose prepare parameters differ from ``wanted`` (``data.prepared`` of a recipe): one
    line naming each parameter, the cache's value, the recipe's, and how to prepare a matching cache. A
    parameter the cache predates counts with its default (what such a cache was made with)."""
    if not wanted:
        return
    want = prepared_params(wanted)
    names = [f.name for f in fields(PrepareParams)]
    have = PrepareParams.build({k: v for k, v in cache_params.items() if k in names})
    diff = [k for k in wanted if getattr(want, k) != getattr(have, k)]
    if diff:
        said = ", ".join(f"{k}={getattr(have, k)!r} (the recipe wants {getattr(want, k)!r})" for k in diff)
        flags = " ".join(f"--param {k}={getattr(want, k)}" for k in diff)
        raise MmvidError(f"{cache} was prepared with {said}; prepare a cache that matches "
                         f"(mmvid prepare DATASET {flags} --name NAME) and train on it with --dataset NAME")
