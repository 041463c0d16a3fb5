"""Checkpoints from others never run code, and every bad checkpoint is one clear line (issue 10, part 1);
``--resume`` of a run killed in its first epoch, and resume messages naming epoch and step (part 4).

The payload checkpoint is a real checkpoint (of the session's tiny run) plus an object whose
``__reduce__`` creates a marker file when unpickled: the test first shows that an unsafe load does
create it, then runs every command that opens checkpoints on it through the CLI.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from mmvid.cli import app
from mmvid.engine.checkpoints import atomic_save, check_plain, load_checkpoint
from mmvid.errors import MmvidError
from mmvid.workflows import resume_message, run_train
from mmvid.workspace import CKPT_LAST

REPO = Path(__file__).resolve().parent.parent
RUN = "victim"


class Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def ws(tiny_ws, tiny_run, tmp_path_factory) -> Path:
    """A workspace sharing the tiny demo cache, with a copy of the tiny run as runs/victim."""
    ws = tmp_path_factory.mktemp("ckws")
    (ws / "caches").mkdir()
    (ws / "caches" / "demo.h5").symlink_to(tiny_ws / "caches" / "demo.h5")
    run = ws / "runs" / RUN
    run.mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        shutil.copy(tiny_run / name, run / name)
    return ws


@pytest.fixture(scope="module")
def good_ck(tiny_run) -> dict:
    return load_checkpoint(tiny_run / CKPT_LAST)


def write_ck(ws: Path, contents) -> Path:
    """``contents`` (a dict to torch.save, or bytes) as runs/victim/checkpoint_last.pt (no best)."""
    path = ws / "runs" / RUN / CKPT_LAST
    (ws / "runs" / RUN / "checkpoint_best.pt").unlink(missing_ok=True)
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    else:
        torch.save(contents, path)
    return path


def cli(ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mmvid.cli", *args], env=env, cwd=ws, capture_output=True, text=True,
                          timeout=600)


def assert_one_error_line(out: str, code: int, path: Path, *needles: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert code == 2, out
    assert "Traceback" not in out, out
    assert len(lines) == 1 and lines[0].startswith("error:"), out
    for n in (str(path), *needles):
        assert n in lines[0], (n, lines[0])
    return lines[0]


COMMANDS = {
    "train --resume": ["train", "--resume", RUN],
    "evaluate": ["evaluate", RUN, "--device", "cpu"],
    "robustness": ["robustness", RUN, "--drop", "audio", "--device", "cpu"],
    "visualize": ["visualize", "confusion", RUN, "--device", "cpu"],
    "report": ["report", RUN, "--no-umap", "--device", "cpu"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_payload_checkpoint_never_runs(ws, good_ck, tmp_path, command):
    live = tmp_path / "unsafe-load-ran"
    probe = tmp_path / "probe.pt"
    torch.save({**good_ck, "payload": Payload(live)}, probe)
    torch.load(probe, weights_only=False)  # what every command did before: the payload is real
    assert live.exists()

    marker = tmp_path / "payload-ran"
    path = write_ck(ws, {**good_ck, "payload": Payload(marker)})
    res = cli(ws, *COMMANDS[command], "-w", str(ws))
    assert not marker.exists(), f"{command} ran the payload"
    assert_one_error_line(res.stderr + res.stdout, res.returncode, path, "code objects", "io.open",
                          "not loaded, for safety")


def old_mmvid_checkpoint(ck: dict) -> dict:
    """As mmvid wrote checkpoints before they held only plain types: numpy RNG state and numpy splits."""
    old = dict(ck)
    old["rng"] = {**ck["rng"], "numpy": np.random.get_state()}
    old["rank_rng"] = [old["rng"]]
    old["splits"] = {k: np.asarray(v) for k, v in ck["splits"].items()}
    return old


def bad_files(good: Path, ck: dict, marker: Path) -> dict[str, object]:
    data = good.read_bytes()
    return {"random bytes": np.random.default_rng(0).bytes(4096), "truncated": data[: len(data) // 2], "empty": b"",
            "a tensor": {"not": torch.zeros(3)}, "old mmvid": old_mmvid_checkpoint(ck),
            "plain pickle with payload": pickle.dumps({**ck, "payload": Payload(marker)})}


EXPECT = {"random bytes": "damaged or truncated", "truncated": "damaged or truncated", "empty": "damaged or truncated",
          "a tensor": "is not an mmvid checkpoint", "old mmvid": "older mmvid",
          "plain pickle with payload": "not a checkpoint at all"}


@pytest.mark.parametrize("kind", list(EXPECT))
@pytest.mark.parametrize("command", ["train --resume", "evaluate"])
def test_unreadable_checkpoint_is_one_line(ws, good_ck, tiny_run, tmp_path, kind, command):
    marker = tmp_path / "payload-ran"
    path = write_ck(ws, bad_files(tiny_run / CKPT_LAST, good_ck, marker)[kind])
    res = CliRunner().invoke(app, [*COMMANDS[command], "-w", str(ws)])
    assert not marker.exists()
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    line = assert_one_error_line(res.output, res.exit_code, path, EXPECT[kind])
    if kind == "old mmvid":
        assert "numpy" in line and "retrain" in line


def test_checkpoints_hold_only_plain_types(good_ck, tmp_path):
    """What training writes loads with weights_only (the good_ck fixture did), and the writer refuses
    anything else, naming the entry: a plug-in's numpy state fails when saved, not when loaded."""
    assert isinstance(good_ck["rng"]["numpy"]["key"], torch.Tensor) and isinstance(good_ck["splits"]["test"], torch.Tensor)
    check_plain(good_ck)
    with pytest.raises(TypeError, match=r"checkpoint\['balancer'\]\['ema'\] is a numpy.float64"):
        atomic_save({**good_ck, "balancer": {"ema": np.float64(0.5)}}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    """Python, numpy and torch draws after restoring a saved (and weights_only-loaded) state repeat exactly."""
    import random

    from mmvid.engine.runtime import rng_state, set_rng_state

    np.random.standard_normal()  # leave numpy with a cached gaussian: part of its state
    torch.save({"rng": rng_state()}, tmp_path / "r.pt")
    first = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == first


# ----------------------------------------------------------------------------- resume (issue 10, part 4)


def record() -> Console:
    return Console(record=True, width=400, file=open(os.devnull, "w"))


def test_resume_messages_name_epoch_and_step():
    ck = {"epoch": 0, "step": 6, "partial": {"batch": 2}}
    assert resume_message("r", ck, 3) == "resuming r in epoch 2 of 3 at its step 3 (6 optimizer steps done so far)"
    ck = {"epoch": -1, "step": 1, "partial": {"batch": 1}}  # Ctrl-C in the first epoch
    assert resume_message("r", ck, 3) == "resuming r in epoch 1 of 3 at its step 2 (1 optimizer step done so far)"
    ck = {"epoch": 1, "step": 8, "partial": None}
    assert resume_message("r", ck, 3) == "resuming r at the start of epoch 3 of 3 (8 optimizer steps done so far)"
    assert resume_message("r", {"epoch": 2, "step": 12}, 3) == "r has finished all 3 epochs; nothing left to train"


def test_stop_in_first_epoch_then_resume_says_where(ws, monkeypatch):
    """Ctrl-C after the first step of epoch 1 saves position (epoch -1, batch 1); resume says epoch 1, step 2."""
    from mmvid.engine import progress

    monkeypatch.setattr(progress.StopRequest, "requested", lambda self, all_reduce=None: True)
    over = {"epochs": 1, "data.batch_size": 16, "device": "cpu", "run_name": "stopped"}
    with pytest.raises(MmvidError, match="training interrupted"):
        run_train(Console(quiet=True), ws, "demo", over, progress=False)
    monkeypatch.undo()
    console = record()
    run = run_train(console, ws, None, {}, resume="stopped", progress=False)
    assert "resuming stopped in epoch 1 of 1 at its step 2 (1 optimizer step done so far)" in console.export_text()
    assert load_checkpoint(run / CKPT_LAST)["epoch"] == 0


def test_kill9_in_first_epoch_restarts_with_saved_config(ws):
    """kill -9 before the first checkpoint leaves config.yaml only; --resume restarts that run (its own
    seed and epochs, not the recipe's) from the beginning and says so."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["--recipe", "demo", "--device", "cpu", "--batch-size", "16", "--epochs", "1", "--seed", "5",
            "--run-name", "killed-early"]
    proc = subprocess.Popen([sys.executable, "-m", "mmvid.cli", "train", "-w", str(ws), *args], env=env, cwd=ws,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run, t0 = ws / "runs" / "killed-early", time.time()
    while not (run / "config.yaml").exists():
        assert proc.poll() is None and time.time() - t0 < 300, "training did not start"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / CKPT_LAST).exists(), "the first epoch ended before the kill"

    before = CliRunner().invoke(app, ["evaluate", "killed-early", "-w", str(ws)])
    assert before.exit_code == 2 and "no checkpoint" in before.output
    console = record()
    run_train(console, ws, None, {}, resume="killed-early", progress=False)
    lines = [ln for ln in console.export_text().splitlines() if "killed-early" in ln]
    assert lines[0] == ("killed-early has no checkpoint yet (it stopped during its first epoch); "
                        "restarting it from the beginning with its saved config.yaml")
    ck = load_checkpoint(run / CKPT_LAST)
    assert ck["epoch"] == 0 and ck["config"]["seed"] == 5 and ck["config"]["epochs"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
