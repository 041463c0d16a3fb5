"""Decoding of the real clips: exact frame counts, frame choice by time (paper: 1 fps, T uniform),
first streams of multi-stream files, rotation metadata, variable frame rate, bad files."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from mmvid.data.decode import DecodeError, NoAudioError, decode_audio, decode_frames, frame_times, probe, select_indices

# (file under shared data, frames, native fps): from the dataset README and ffprobe
CLIPS = [
    ("crema_d/VideoFlash/1001_DFA_ANG_XX.flv", 67, 29.97), ("crema_d/VideoFlash/1001_DFA_DIS_XX.flv", 70, 29.97),
    ("crema_d/VideoFlash/1001_DFA_FEA_XX.flv", 65, 29.97), ("crema_d/VideoFlash/1001_DFA_HAP_XX.flv", 56, 29.97),
    ("crema_d/VideoFlash/1001_DFA_NEU_XX.flv", 61, 29.97), ("crema_d/VideoFlash/1001_DFA_SAD_XX.flv", 60, 29.97),
    ("kinetics_sounds_style/videos/chaplin.mp4", 241, 25.0),
    ("kinetics_sounds_style/videos/flipping_a_pancake.mkv", 310, 30.0),
    ("kinetics_sounds_style/videos/mmaction2_test_noaudio.mp4", 300, 30.0),
    ("kinetics_sounds_style/videos/v_GGSY1Qvo990.mp4", 355, 19.62),
    ("kinetics_sounds_style/videos/v_ZNVhz7ctTq0.mp4", 420, 30.0),
    ("ucf101/UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 164, 25.0),
]


def test_select_indices_one_fps_then_uniform():
    # 164 frames at 25 fps = 6.56 s -> 7 one-second candidates at 0.5, 1.5, ... 6.5 s = frames 12, 37, ..., 162;
    # T = 3 takes the centres of 3 equal segments of those 7: candidates 1, 3, 5.
    assert select_indices(164, 25.0, 3, 1.0).tolist() == [37, 87, 137]
    assert select_indices(164, 25.0, 7, 1.0).tolist() == [12, 37, 62, 87, 112, 137, 162]
    # native rate (no resampling): centres of T segments of all frames
    assert select_indices(10, 25.0, 2, None).tolist() == [2, 7]
    # shorter than a second: its one candidate (the frame at 0.5 s) repeats
    assert select_indices(20, 25.0, 3, 1.0).tolist() == [12, 12, 12]
    with pytest.raises(DecodeError, match="no frames"):
        select_indices(0, 25.0, 3, 1.0)


def test_frame_times_rejects_untrustworthy_container_times():
    assert frame_times([0.0, 0.5, 0.6], 10.0).tolist() == [0.0, 0.5, 0.6]
    # AVI: out-of-order or missing times fall back to index / fps
    assert frame_times([0.04, 0.16, 0.12], 25.0).tolist() == pytest.approx([0.0, 0.04, 0.08])
    assert frame_times([None, 0.1], 10.0).tolist() == pytest.approx([0.0, 0.1])


@pytest.mark.parametrize("rel,n,fps", CLIPS, ids=[Path(c[0]).name for c in CLIPS])
def test_exact_frame_counts_and_one_fps_choice(shared_data, rel, n, fps):
    frames, info = decode_frames(shared_data / rel, 3, 1.0, 64)
    assert info.num_frames == n and info.fps == pytest.approx(fps, abs=0.01)
    assert frames.shape == (3, 64, 64, 3) and frames.dtype == np.uint8
    # chosen by the container's times; FLV stores whole milliseconds, which can move a choice by one frame
    assert np.abs(info.indices - select_indices(n, fps, 3, 1.0)).max() <= 1


@pytest.mark.parametrize("rel", [CLIPS[0][0], CLIPS[7][0], CLIPS[11][0]], ids=["flv", "mkv", "avi"])
def test_decord_and_pyav_agree(shared_data, rel):
    a, ia = decode_frames(shared_data / rel, 3, 1.0, 64, backend="decord")
    b, ib = decode_frames(shared_data / rel, 3, 1.0, 64, backend="pyav")
    assert (ia.backend, ib.backend) == ("decord", "pyav")
    assert ia.indices.tolist() == ib.indices.tolist()
    assert np.abs(a.astype(float) - b).mean() < 1.0  # same frames, up to the scalers' rounding


def test_multi_stream_file_uses_first_streams(shared_data):
    import av

    path = shared_data / "kinetics_sounds_style/videos/nasa_13013.mp4"
    assert probe(path).video_streams == 2 and probe(path).audio_streams == 2
    _, info = decode_frames(path, 3, 1.0, 32)
    # stream 0 is 320x180 at 25 fps with 325 frames; decord alone would pick the 29.97 fps stream (390 frames)
    assert (info.num_frames, info.fps, info.backend) == (325, 25.0, "pyav")
    wave = decode_audio(path, 8000)
    with av.open(str(path)) as c:  # the first audio stream (8 kHz), decoded here independently
        first = np.concatenate([f.to_ndarray().mean(0) for f in c.decode(c.streams.audio[0])])
    assert abs(len(wave) - len(first)) < 64
    m = min(len(wave), len(first))
    assert np.corrcoef(wave[:m], first[:m])[0, 1] > 0.99


def test_audio_any_rate_and_channels_to_mono(shared_data):
    # chaplin: stereo MP3 at 44.1 kHz, 9.64 s; the UCF clip's wav: 16 kHz stereo PCM, 6.56 s
    wave = decode_audio(shared_data / "kinetics_sounds_style/videos/chaplin.mp4", 22050)
    assert wave.ndim == 1 and wave.dtype == np.float32 and abs(len(wave) / 22050 - 9.64) < 0.1
    wav = decode_audio(shared_data / "ucf101/audio/v_ApplyEyeMakeup_g01_c01.wav", 8000)
    vid = decode_audio(shared_data / "ucf101/UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 8000)
    assert abs(len(wav) - len(vid)) < 0.05 * 8000


def test_audio_is_what_the_caches_always_held(shared_data):
    """Audio decoding moved from decord-then-PyAV to PyAV alone (decord's AudioReader leaks the waveform's size
    on every call). The values do not change: the former decord call, ``AudioReader(...).asnumpy()``, raised
    AttributeError on every file (decord 0.6.0's AudioReader has no ``asnumpy``), so PyAV's waveform was what
    every cache stored. Checked here on the installed decord, and on a real clip: the new path equals
    PyAV's waveform exactly (tolerance 0)."""
    import decord

    from mmvid.data.decode import _pyav_audio

    assert not hasattr(decord.AudioReader, "asnumpy")
    path = shared_data / CLIPS[0][0]
    assert np.array_equal(decode_audio(path, 22050), _pyav_audio(path, 22050))


def test_no_audio_stream(shared_data):
    with pytest.raises(NoAudioError, match="no audio stream"):
        decode_audio(shared_data / "kinetics_sounds_style/videos/mmaction2_test_noaudio.mp4", 16000)


def _remux(src: Path, dst: Path, rotation: float | None = None) -> None:
    """Copy the first video stream's packets of a real file (no re-encoding), optionally with a rotation."""
    import av

    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        vs = o.add_stream_from_template(i.streams.video[0])
        if rotation is not None:
            vs.set_display_rotation(rotation)
        for p in i.demux(i.streams.video[0]):
            if p.dts is None:
                continue
            p.stream = vs
            o.mux(p)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_rotation_metadata_is_applied(shared_data, tmp_path, backend):
    src = shared_data / "kinetics_sounds_style/videos/chaplin.mp4"  # 640x360
    rot = tmp_path / "rot90.mp4"
    _remux(src, rot, rotation=90)
    plain, _ = decode_frames(src, 3, 1.0, 64, backend=backend)
    turned, info = decode_frames(rot, 3, 1.0, 64, backend=backend)
    assert info.backend == backend
    # display matrix 90 degrees = shown turned counter-clockwise
    assert np.abs(turned.astype(float) - np.rot90(plain, 1, axes=(1, 2))).mean() < 1.0
    assert np.abs(turned.astype(float) - plain).mean() > 10.0


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_variable_frame_rate_is_sampled_by_time(shared_data, tmp_path, backend):
    import av

    # 40 real UCF-101 frames: 30 in the first second (30 fps), then 10 frames 0.5 s apart (2 fps)
    frames, _ = decode_frames(shared_data / CLIPS[11][0], 40, None, 64)
    pts_ms = [round(1000 * i / 30) for i in range(30)] + [1000 + 500 * k for k in range(10)]
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        s.time_base = Fraction(1, 1000)
        for fr, pts in zip(frames, pts_ms):
            vf = av.VideoFrame.from_ndarray(fr, format="rgb24")
            vf.pts, vf.time_base = pts, Fraction(1, 1000)
            for pkt in s.encode(vf):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    _, info = decode_frames(path, 6, 1.0, 32, backend=backend)
    assert info.num_frames == 40
    # seconds 0..5, centres 0.5 .. 5.5 s: frame 15 (t = 0.5), then 31, 33, 35, 37, 39 (t = 1.5, 2.5, ...)
    assert info.indices.tolist() == [15, 31, 33, 35, 37, 39]
    # an index-based choice (as if the 40 frames were evenly spread) would be different
    assert info.indices.tolist() != select_indices(40, 40 / 6.0, 6, 1.0).tolist()


def make_bad_files(shared_data: Path, folder: Path) -> dict[str, Path]:
    """Broken inputs made from real files: empty, truncated, header-only flv, a one-frame clip."""
    import av

    real = (shared_data / CLIPS[6][0]).read_bytes()
    flv = (shared_data / CLIPS[0][0]).read_bytes()
    out = {name: folder / name for name in ("empty.mp4", "truncated.mp4", "header_only.flv", "one_frame.mp4")}
    out["empty.mp4"].write_bytes(b"")
    out["truncated.mp4"].write_bytes(real[:3000])
    # FLV header + its onMetaData tag (which still claims a duration), no audio/video tags: "no duration"
    out["header_only.flv"].write_bytes(flv[:13 + 11 + int.from_bytes(flv[14:17], "big") + 4])
    with av.open(str(shared_data / CLIPS[6][0])) as i, av.open(str(out["one_frame.mp4"]), "w") as o:
        vs = o.add_stream_from_template(i.streams.video[0])
        pkt = next(p for p in i.demux(i.streams.video[0]) if p.dts is not None)
        pkt.stream = vs
        o.mux(pkt)
    return out


def test_bad_files_raise_decode_errors(shared_data, tmp_path):
    bad = make_bad_files(shared_data, tmp_path)
    expected = {"empty.mp4": "file is empty", "truncated.mp4": "unreadable container|cannot decode",
                "header_only.flv": "unreadable container", "one_frame.mp4": "too short: 1 frame"}
    for name, msg in expected.items():
        with pytest.raises(DecodeError, match=msg):
            decode_frames(bad[name], 3, 1.0, 32, min_seconds=0.5)
    with pytest.raises(DecodeError, match="not found"):
        decode_frames(tmp_path / "missing.mp4", 3, 1.0, 32)


def test_frames_decode_with_pyav_where_decord_cannot_be_imported(shared_data, monkeypatch):
    """decord is installed under an environment marker (platforms with its wheels): where it is missing, decoding
    asks for PyAV directly and gives PyAV's frames, while decord, where importable, is used as asked."""
    from mmvid.data import decode

    path = shared_data / CLIPS[0][0]
    _, with_decord = decode_frames(path, 3, 1.0, 64, backend="decord")
    assert decode.decord_available() and with_decord.backend == "decord"
    pyav, _ = decode_frames(path, 3, 1.0, 64, backend="pyav")
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` now raises ImportError, as where it has no wheel
    assert not decode.decord_available()
    frames, info = decode_frames(path, 3, 1.0, 64, backend="decord")
    assert info.backend == "pyav" and np.array_equal(frames, pyav)
