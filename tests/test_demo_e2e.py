"""End to end on a tiny demo: real mp4 files -> decode -> cache -> train -> evaluate."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from mmvid.data.cache import read_info
from mmvid.data.decode import decode_audio, decode_frames, select_indices
from mmvid.data.features import spectrogram_shape
from mmvid.data.sources.demo import CLASS_NAMES, DEMO_PARAMS, ROOTS, SR, write_mp4


def test_cache_contents(tiny_ws):
    path = tiny_ws / "caches" / "demo.h5"
    info = read_info(path)
    assert info.dataset == "demo" and info.class_names == CLASS_NAMES
    assert len(info.names) == 60 and (info.status == 1).all()
    assert info.shapes["frames"] == (3, 32, 32, 3)
    assert info.shapes["spectrogram"] == spectrogram_shape(SR, 2.0, 512, 256) == (257, 126)
    assert len(info.indices("train")) == 40 and len(info.indices("test")) == 20  # 25 % test per class
    assert np.bincount(info.labels, minlength=10).tolist() == [6] * 10  # balanced classes
    for key in ("fps", "num_frames", "image_size", "sample_rate", "clip_seconds", "n_fft", "hop", "window", "decoder"):
        assert f"param.{key}" in info.attrs
    assert json.loads(info.attrs["param.n_fft"]) == DEMO_PARAMS["n_fft"]
    assert "decord" in json.loads(info.attrs["versions"])
    with h5py.File(path) as f:
        assert f["frames"].dtype == np.uint8 and f["spectrogram"].dtype == np.float16
        assert f["frames"].chunks == (1, 3, 32, 32, 3)  # one clip per chunk: fast random reads
        names = [n.decode() for n in f["names"][:4]]
    # Clip names are '<class>/<clip>' and the label is the class of the folder.
    for n, lab in zip(names, info.labels[:4]):
        assert n.split("/")[0] == CLASS_NAMES[lab]


def test_demo_is_read_back_through_real_decoding(tmp_path):
    """Frames (decord and PyAV) and audio (PyAV) written with PyAV decode back to what was written."""
    rng = np.random.default_rng(0)
    frames = np.zeros((10, 32, 32, 3), dtype=np.uint8)
    for t in range(10):
        frames[t, :, : 3 * t + 2] = 200  # a bar that grows: each frame is distinct
    wave = (0.3 * np.sin(2 * np.pi * ROOTS[3] * np.arange(2 * SR) / SR)).astype(np.float32)
    path = tmp_path / "x.mp4"
    write_mp4(path, frames, wave + rng.normal(0, 0.01, wave.shape).astype(np.float32))
    idx = select_indices(10, 5.0, 3, None)
    assert idx.tolist() == [1, 5, 8]
    for backend in ("decord", "pyav"):
        got, info = decode_frames(path, 3, None, 32, backend)
        assert info.num_frames == 10 and got.shape == (3, 32, 32, 3)
        # lossless H.264: only the yuv420p round trip (chroma at half resolution) separates them
        assert np.abs(got.astype(int) - frames[idx].astype(int)).mean() < 8
    audio = decode_audio(path, SR)  # PyAV (decord is not used for audio)
    assert 0 <= len(audio) - 2 * SR <= 2048  # AAC adds up to two frames of priming/padding
    spectrum = np.abs(np.fft.rfft(audio))
    peak = np.fft.rfftfreq(len(audio), 1 / SR)[spectrum.argmax()]
    assert abs(peak - ROOTS[3]) < 5  # the tone survives AAC


def test_the_demo_decodes_to_the_same_frames_every_time_it_is_generated(tmp_path):
    """Regenerating the demo (a new workspace, another run of CI) gives clips that decode to the same frames.
    At crf 18, x264 wrote other bytes for the same pixels now and then (1 clip in 3 on a busy machine), so
    caches, trained models and the tests' figures drifted; the clips are now lossless."""
    import av

    from mmvid.data.sources.demo import generate

    roots = [generate(tmp_path / k, n_clips=30, seed=0) for k in ("a", "b")]
    for f in sorted(p.relative_to(roots[0]) for p in roots[0].rglob("*.mp4")):
        with av.open(str(roots[0] / f)) as a, av.open(str(roots[1] / f)) as b:
            fa = [x.to_ndarray(format="rgb24") for x in a.decode(video=0)]
            fb = [x.to_ndarray(format="rgb24") for x in b.decode(video=0)]
        assert len(fa) == len(fb) == 10 and all(np.array_equal(x, y) for x, y in zip(fa, fb)), f


def test_train_and_evaluate_write_their_outputs(tiny_run):
    from mmvid.results.evaluation import evaluate_run

    for name in ("config.yaml", "metrics.jsonl", "checkpoint_last.pt", "checkpoint_best.pt", "summary.json"):
        assert (tiny_run / name).exists(), name
    rec = json.loads((tiny_run / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("train_loss", "val_acc", "test_acc", "test_acc_audio", "test_acc_video", "train_acc_audio", "rho"):
        assert key in rec and np.isfinite(rec[key])
    ck = torch.load(tiny_run / "checkpoint_last.pt", weights_only=True)
    assert ck["config"]["epochs"] == 1 and ck["class_names"] == CLASS_NAMES
    out = evaluate_run(tiny_run)
    assert (tiny_run / "eval_test.json").exists()
    assert out["n"] == 20 and 0 <= out["accuracy"] <= 1
    assert np.asarray(out["confusion"]).sum() == 20
    assert set(out["modality_accuracy"]) == {"audio", "video"}


def test_cli_evaluate_prints_table_and_json(tiny_run, tiny_ws):
    from typer.testing import CliRunner

    from mmvid.cli import app

    res = CliRunner().invoke(app, ["evaluate", "-w", str(tiny_ws), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["split"] == "test" and "accuracy" in data
    res = CliRunner().invoke(app, ["evaluate", "tiny-concat", "-w", str(tiny_ws)])
    assert res.exit_code == 0 and "accuracy" in res.output and "audio only" in res.output


def test_prepare_again_is_a_no_op(tiny_ws):
    from typer.testing import CliRunner

    from mmvid.cli import app

    res = CliRunner().invoke(app, ["prepare", "demo", "-w", str(tiny_ws), "--clips", "60"])
    assert res.exit_code == 0 and "already complete" in res.output


@pytest.mark.slow
def test_prepare_resumes_a_partial_cache(tmp_path):
    """An interrupted prepare leaves only <name>.h5.partial; re-running finishes the missing clips."""
    import dataclasses

    from mmvid.data.cache import partial_path
    from mmvid.data.cache_writer import CacheWriter
    from mmvid.data.prepare import PrepareParams, prepare, process_clip
    from mmvid.data.sources import get_source

    src = get_source("demo")(root=tmp_path / "raw", n_clips=20)
    cache = tmp_path / "demo.h5"
    params = PrepareParams(**src.params)
    # Simulate a crash after 8 clips: write them, close without finalising.
    w = CacheWriter(cache, [c.name for c in src.clips], [c.label for c in src.clips], [c.split for c in src.clips],
                    src.class_names, params.shapes(), dataclasses.asdict(params), "demo")
    for i in range(8):
        w.write(i, process_clip(src.clips[i], params))
    w.close()
    assert partial_path(cache).exists() and not cache.exists()
    report = prepare(src, cache, params, progress=False)
    assert report.skipped_done == 8 and report.ok == 20
    assert cache.exists() and not partial_path(cache).exists()


def test_demo_shortcut_chords(tmp_path):
    """demo-shortcut: a training clip's chord names its class (10 chords); a test clip of class c + 5
    carries the chord of class c (5 chords), read back from the written mp4 files."""
    from mmvid.data.sources import get_source

    src = get_source("demo-shortcut")(root=tmp_path / "raw", n_clips=40)
    assert src.dataset == "demo-shortcut" and {c.split for c in src.clips} == {"train", "test"}
    for clip in src.clips:
        audio = decode_audio(clip.video, SR)
        spectrum = np.abs(np.fft.rfft(audio))
        freqs = np.fft.rfftfreq(len(audio), 1 / SR)
        # energy at the three partials (root, major third, fifth) of each of the 10 chords
        energy = [sum(spectrum[np.abs(freqs - ROOTS[k] * r) < 3].sum() for r in (1.0, 1.25, 1.5)) for k in range(10)]
        want = clip.label if clip.split == "train" else clip.label % 5
        assert int(np.argmax(energy)) == want, (clip.name, clip.split)
