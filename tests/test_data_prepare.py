"""`prepare` end to end on the real clips: exact shapes, labels, splits and attributes; bad files
reported and skipped; resume after an interruption; `--info` verification."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from rich.console import Console
from test_data_decode import make_bad_files  # noqa: E402  (tests/ is on sys.path under pytest)
from test_data_sources import CREMAD_NAMES, ks_tree
from typer.testing import CliRunner

from mmvid.cli import app
from mmvid.data import prepare as prepare_mod
from mmvid.data.cache import read_info
from mmvid.errors import MmvidError
from mmvid.workflows import run_prepare

QUIET = Console(quiet=True)


def _cremad_args(shared_data: Path, ws: Path, *extra: str) -> list[str]:
    root = shared_data / "crema_d"
    return ["prepare", "cremad", "--workspace", str(ws), "--root", str(root),
            "--train-list", str(root / "splits_fixture/train.csv"), "--test-list", str(root / "splits_fixture/test.csv"), *extra]


def test_cremad_cli_end_to_end(shared_data, tmp_path):
    import librosa

    from mmvid.data.decode import decode_frames
    from mmvid.data.features import log_spectrogram

    runner = CliRunner()
    res = runner.invoke(app, _cremad_args(shared_data, tmp_path))
    assert res.exit_code == 0, res.output
    cache = tmp_path / "caches/cremad.h5"
    info = read_info(cache)
    assert info.shapes == {"frames": (2, 224, 224, 3), "spectrogram": (257, 188)}
    assert sorted(info.names) == CREMAD_NAMES and (info.status == 1).all()
    for i, name in enumerate(info.names):
        assert info.class_names[info.labels[i]] == name.split("_")[2]
        assert ("test" if name.split("_")[2] in ("HAP", "SAD") else "train") == ("train", "val", "test")[info.split[i]]
    a = info.attrs
    assert json.loads(a["class_names"]) == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    for key, want in [("fps", 1.0), ("num_frames", 2), ("image_size", 224), ("sample_rate", 22050), ("clip_seconds", 3.0),
                      ("n_fft", 512), ("hop", 353), ("window", "hann"), ("normalisation", "imagenet"), ("decoder", "decord")]:
        assert json.loads(a[f"param.{key}"]) == want
    assert {"decord", "av", "librosa", "h5py", "mmvid"} <= set(json.loads(a["versions"]))
    # stored rows are the decoded frames and the OGM-GE spectrogram of the AudioWAV file
    i = info.names.index("1001_DFA_ANG_XX")
    with h5py.File(cache) as f:
        frames, spec = f["frames"][i], f["spectrogram"][i]
    want, _ = decode_frames(shared_data / "crema_d/VideoFlash/1001_DFA_ANG_XX.flv", 2, 1.0, 224)
    assert np.array_equal(frames, want)
    wave, _ = librosa.load(str(shared_data / "crema_d/AudioWAV/1001_DFA_ANG_XX.wav"), sr=22050)
    assert np.allclose(spec.astype(np.float32), log_spectrogram(wave, 22050, 3.0, 512, 353), atol=0.02)
    report = json.loads((tmp_path / "caches/cremad.h5.report.json").read_text())
    assert report["ok"] == 6 and report["failed"] == []
    _loader_batch_matches_cache(cache, frames, spec, i)
    # --info prints counts per split and class and verifies every row
    res = runner.invoke(app, ["prepare", "cremad", "--workspace", str(tmp_path), "--info"])
    assert res.exit_code == 0 and "verified" in res.output and "HAP" in res.output
    # the same command again does nothing; a damaged row makes --info fail with one line
    res = runner.invoke(app, _cremad_args(shared_data, tmp_path))
    assert res.exit_code == 0 and "already complete" in res.output
    with h5py.File(cache, "a") as f:
        f["spectrogram"][i] = np.nan
    res = runner.invoke(app, ["prepare", "cremad", "--workspace", str(tmp_path), "--info"])
    assert res.exit_code == 2 and "failed verification" in res.output and "1001_DFA_ANG_XX" in res.output


def _loader_batch_matches_cache(cache: Path, frames: np.ndarray, spec: np.ndarray, i: int) -> None:
    """A DataLoader batch crosses as uint8 frames and float16 spectrograms (half the bytes between
    processes); ``finish_batch`` turns it into exactly the normalised cache row."""
    import torch
    from torch.utils.data import DataLoader

    from mmvid.data.torch_dataset import IMAGENET_MEAN, IMAGENET_STD, CacheDataset, finish_batch

    ds = CacheDataset(cache, np.array([i, i]), ["audio", "video"])
    raw, y = next(iter(DataLoader(ds, batch_size=2, num_workers=1)))
    assert raw["video"].dtype == torch.uint8 and raw["audio"].dtype == torch.float16 and y.tolist() == [ds.labels[0]] * 2
    x = finish_batch(raw)
    want = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - IMAGENET_MEAN) / IMAGENET_STD
    assert x["video"].shape == (2, 2, 3, 224, 224) and torch.allclose(x["video"][1], want, atol=1e-5)
    assert x["audio"].dtype == torch.float32 and torch.equal(x["audio"][0, 0], torch.from_numpy(spec).float())


def test_wrong_root_cli_one_line(tmp_path):
    res = CliRunner().invoke(app, ["prepare", "ucf101", "--workspace", str(tmp_path), "--root", str(tmp_path)])
    assert res.exit_code == 2 and "classInd.txt" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("flow", ["precomputed", "dis"])
def test_ucf101_rgb_and_flow(shared_data, tmp_path, flow):
    from mmvid.data.flow import read_flow_dir
    from mmvid.data.prepare import PrepareParams

    cache = run_prepare(QUIET, tmp_path, "ucf101", root=shared_data / "ucf101", split="1", progress=False,
                        params={"flow": flow, "image_size": 64})
    info = read_info(cache)
    assert info.shapes == {"frames": (3, 64, 64, 3), "spectrogram": (257, 188), "flow": (3, 64, 64, 2)}
    assert info.names == ["v_ApplyEyeMakeup_g01_c01"] and info.labels.tolist() == [0] and info.split.tolist() == [2]
    assert info.class_names[0] == "ApplyEyeMakeup" and len(info.class_names) == 101
    with h5py.File(cache) as f:
        stored, spec = f["flow"][0], f["spectrogram"][0].astype(np.float32)
    assert np.isfinite(spec).all() and spec.std() > 0.5  # the avi's real audio track, not zeros
    if flow == "precomputed":
        assert np.array_equal(stored, read_flow_dir(shared_data / "ucf101/frames/v_ApplyEyeMakeup_g01_c01",
                                                    PrepareParams(**info.params)))
    else:
        import cv2
        import decord

        from mmvid.data.flow import compute_flow, quantise_flow

        # flow from each chosen frame (37, 87, 137 at 1 fps) to the next, at native 320x240, then resized
        vr = decord.VideoReader(str(shared_data / "ucf101/UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"))
        for t, i in enumerate((37, 87, 137)):
            a, b = vr.get_batch([i, i + 1]).asnumpy()
            want = quantise_flow(cv2.resize(compute_flow(a, b, "dis"), (64, 64), interpolation=cv2.INTER_AREA), 20.0)
            assert np.abs(stored[t].astype(int) - want).max() <= 1


def test_bad_files_are_reported_and_skipped(shared_data, tmp_path):
    root, tr, te = ks_tree(shared_data, tmp_path, {"chaplin.mp4": (1, "train"), "nasa_13013.mp4": (2, "test"),
                                                   "mmaction2_test_noaudio.mp4": (3, "train")})
    bad = make_bad_files(shared_data, root / "videos")
    with open(tr, "a") as f:
        f.write("".join(f"{Path(n).stem},10,4\n" for n in bad))
    params = {"image_size": 32, "clip_seconds": 2.0}
    cache = run_prepare(QUIET, tmp_path / "ws", "kinetics-sounds", root=root, train_list=tr, test_list=te,
                        progress=False, params=params)
    report = json.loads(Path(f"{cache}.report.json").read_text())
    errors = {f["name"]: f["error"] for f in report["failed"]}
    assert sorted(errors) == ["empty", "header_only", "mmaction2_test_noaudio", "one_frame", "truncated"]
    assert "no audio stream" in errors["mmaction2_test_noaudio"]
    assert "empty" in errors["empty"] and "too short" in errors["one_frame"]
    assert report["ok"] == 2
    info = read_info(cache)
    ok = [n for n, s in zip(info.names, info.status) if s == 1]
    assert sorted(ok) == ["chaplin", "nasa_13013"] and int(info.attrs["num_failed"]) == 5
    # --missing-audio zeros keeps the silent clip with the log of silence as its spectrogram (mmvid's STFT inputs;
    # the data set's default is OGM-GE's filterbank, whose silence tests/reference/test_reference_inputs.py checks)
    cache = run_prepare(QUIET, tmp_path / "ws", "kinetics-sounds", root=root, train_list=tr, test_list=te, name="ks0",
                        progress=False, params={**params, "missing_audio": "zeros"}, preset="mmvid")
    info = read_info(cache)
    i = info.names.index("mmaction2_test_noaudio")
    assert info.status[i] == 1
    with h5py.File(cache) as f:
        assert np.allclose(f["spectrogram"][i].astype(np.float32), np.log(1e-7), rtol=1e-3)


def test_resume_after_interruption(shared_data, tmp_path, monkeypatch):
    real = prepare_mod.process_clip
    decoded: list[str] = []

    def interrupt_at_fourth(clip, p):
        if len(decoded) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the 4th clip decodes
        decoded.append(clip.name)
        return real(clip, p)

    monkeypatch.setattr(prepare_mod, "process_clip", interrupt_at_fourth)
    root = shared_data / "crema_d"
    kw = dict(root=root, train_list=root / "splits_fixture/train.csv", test_list=root / "splits_fixture/test.csv",
              progress=False, params={"image_size": 32})
    with pytest.raises(MmvidError, match="interrupted.*re-run the same command"):
        run_prepare(QUIET, tmp_path, "cremad", **kw)
    cache = tmp_path / "caches/cremad.h5"
    assert not cache.exists() and Path(f"{cache}.partial").exists()
    with pytest.raises(MmvidError, match="incomplete"):
        read_info(cache)
    first_run = list(decoded)
    decoded.clear()
    monkeypatch.setattr(prepare_mod, "process_clip", lambda clip, p: (decoded.append(clip.name), real(clip, p))[1])
    run_prepare(QUIET, tmp_path, "cremad", **kw)  # the same command again resumes
    assert len(first_run) == 3 and sorted(first_run + decoded) == CREMAD_NAMES  # nothing decoded twice
    info = read_info(cache)
    assert (info.status == 1).all() and not Path(f"{cache}.partial").exists()


def test_damaged_partial_file_restarts(shared_data, tmp_path):
    root = shared_data / "crema_d"
    partial = tmp_path / "caches/cremad.h5.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # what a crash mid-write can leave
    cache = run_prepare(QUIET, tmp_path, "cremad", root=root, train_list=root / "splits_fixture/train.csv",
                        test_list=root / "splits_fixture/test.csv", progress=False, params={"image_size": 32})
    assert (read_info(cache).status == 1).all()


@pytest.mark.slow
def test_parallel_workers_give_the_same_cache(shared_data, tmp_path, monkeypatch):
    """In this process, in 2 workers and in 1 child process, with the decoder processes recycled every 2 clips
    (the 6 clips go through 2 pools of 2 workers, then 3 pools of 1): the same cache."""
    root = shared_data / "crema_d"
    kw = dict(root=root, train_list=root / "splits_fixture/train.csv", test_list=root / "splits_fixture/test.csv",
              progress=False, params={"image_size": 32})
    one = run_prepare(QUIET, tmp_path, "cremad", name="one", workers=1, **kw)
    monkeypatch.setattr(prepare_mod, "RECYCLE_AFTER", 2)  # also sends workers=1 with > 2 clips to a child process
    others = [run_prepare(QUIET, tmp_path, "cremad", name=f"w{w}", workers=w, **kw) for w in (2, 1)]
    for other in others:
        with h5py.File(one) as a, h5py.File(other) as b:
            assert a["status"].shape == (6,)
            for key in ("frames", "spectrogram", "labels", "split", "status"):
                assert np.array_equal(a[key][:], b[key][:])


KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from rich.console import Console
from mmvid.data import prepare as m
from mmvid.workflows import run_prepare
real, n = m.process_clip, []
def killed_at_fourth(clip, p):
    if len(n) == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # a hard crash: no cleanup at all
    n.append(clip.name)
    return real(clip, p)
m.process_clip = killed_at_fourth
root = Path(sys.argv[2])
run_prepare(Console(quiet=True), Path(sys.argv[1]), "cremad", root=root, train_list=root / "splits_fixture/train.csv",
            test_list=root / "splits_fixture/test.csv", progress=False, params={"image_size": 32})
"""


@pytest.mark.slow
def test_hard_kill_never_leaves_a_complete_looking_cache(shared_data, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path), str(shared_data / "crema_d")], env=env)
    assert proc.returncode == -9
    cache = tmp_path / "caches/cremad.h5"
    assert not cache.exists()
    with pytest.raises(MmvidError, match="incomplete"):
        read_info(cache)
    root = shared_data / "crema_d"
    run_prepare(QUIET, tmp_path, "cremad", root=root, train_list=root / "splits_fixture/train.csv",
                test_list=root / "splits_fixture/test.csv", progress=False, params={"image_size": 32})
    assert (read_info(cache).status == 1).all()
    assert json.loads(Path(f"{cache}.report.json").read_text())["skipped_done"] == 3  # resumed, not restarted
