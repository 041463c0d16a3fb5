"""What the decoders' C libraries print goes into the prepare report, never to the terminal: a real damaged
file (an MJPEG AVI whose every frame claims 65000x65000 pixels) makes FFmpeg inside decord print one
``[mjpeg @ 0x...] Picture size 65000x65000 is invalid`` line per frame on file descriptor 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmvid.data.decode import decoder_log, summarize_log

REPO = Path(__file__).resolve().parent.parent
RAW_LINE = re.compile(r"\[[^\]]+ @ 0x[0-9a-fA-F]+\]")


def absurd_mjpeg(path: Path, frames: int = 16) -> Path:
    """An MJPEG AVI whose JPEG headers (SOF0) say 65000x65000 pixels in every frame."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=8)
        s.width = s.height = 32
        s.pix_fmt = "yuvj420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * i, np.uint8), format="rgb24")
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    data = bytearray(path.read_bytes())
    k, n = 0, 0
    while (k := data.find(b"\xff\xc0", k)) >= 0:  # SOF0: marker, length (2), precision (1), height (2), width (2)
        data[k + 5:k + 9] = (65000).to_bytes(2, "big") * 2
        k, n = k + 2, n + 1
    assert n == frames
    path.write_bytes(bytes(data))
    return path


def test_the_damaged_file_does_print_raw_decoder_lines_when_not_captured(tmp_path):
    """The premise: decoding the file prints FFmpeg lines on descriptor 2 (a child process, to see them)."""
    bad = absurd_mjpeg(tmp_path / "bad.avi")
    code = ("from mmvid.data.decode import decode_frames\n"
            f"try:\n    decode_frames({str(bad)!r}, 4, None, 32)\nexcept Exception:\n    pass\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert len(RAW_LINE.findall(done.stderr)) >= 16 and "Picture size 65000x65000 is invalid" in done.stderr


def test_decoder_log_collects_descriptor_2_and_restores_it(tmp_path, capfd):
    with decoder_log() as log:
        os.write(2, b"[mjpeg @ 0x55d0c8a1] Picture size 65000x65000 is invalid\n" * 3 + b"[in @ 0xab] other\n")
    os.write(2, b"after\n")
    assert log == ["[mjpeg] Picture size 65000x65000 is invalid (3 times)", "[in] other"]
    assert capfd.readouterr().err == "after\n"


def test_summarize_log_keeps_a_bounded_number_of_distinct_lines():
    text = "".join(f"[h264 @ 0x{k:x}] message {k % 30}\n" for k in range(300))
    out = summarize_log(text)
    assert len(out) == 21 and out[0] == "[h264] message 0 (10 times)" and out[-1] == "... and 10 other messages"


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_routes_decoder_lines_into_the_report(tmp_path, workers):
    from mmvid.data.sources.demo import write_mp4

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(2):  # real 2 s H.264 + AAC clips
            write_mp4(root / cls / f"{cls}{i}.mp4", (rng.random((10, 32, 32, 3)) * 255).astype(np.uint8),
                      (0.2 * np.sin(np.arange(32000) / 16000 * 2 * np.pi * (300 + 50 * i))).astype(np.float32))
    bad = absurd_mjpeg(root / "cat" / "bad.avi")
    ws = tmp_path / "ws"
    done = subprocess.run([sys.executable, "-m", "mmvid.cli", "prepare", "folder", "--root", str(root), "--name", "x",
                           "-w", str(ws), "--image-size", "32", "--workers", str(workers)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    for stream in (done.stdout, done.stderr):
        assert not RAW_LINE.search(stream) and "Picture size" not in stream, stream
    assert "the decoders printed messages on 1 clip;" in done.stdout
    report = json.loads((ws / "caches" / "x.h5.report.json").read_text())
    assert [(f["name"], f["file"]) for f in report["failed"]] == [("cat/bad", str(bad))]
    failure = report["failed"][0]
    assert failure["error"].startswith("cannot decode video")
    assert "[mjpeg] [IMGUTILS] Picture size 65000x65000 is invalid (16 times)" in failure["decoder_log"]
    assert report["decoder_messages"] == []  # the good clips decoded silently
