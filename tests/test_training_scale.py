"""Training at scale on CPU: DDP through ``--gpus 2`` (gloo), exact resume (Ctrl-C mid-epoch, kill -9),
NaN stop, bf16 autocast, the on-device cache; CUDA-only paths skip without a GPU.

All runs use the demo cache (40 real mp4 clips decoded through the normal path) and the small encoder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

from mmvid.engine.checkpoints import load_checkpoint
from mmvid.errors import MmvidError
from mmvid.workflows import run_prepare, run_train
from mmvid.workspace import CKPT_LAST

REPO = Path(__file__).resolve().parent.parent
BASE = {"data.dataset": "demo", "device": "cpu", "model.encoder": "small", "epochs": 3, "data.batch_size": 8}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    run_prepare(Console(quiet=True), ws, "demo", clips=50, progress=False)  # 30 train clips: 4 steps of 8
    return ws


def train_run(ws: Path, name: str, **over) -> Path:
    overrides = {**BASE, "run_name": name, **{k.replace("__", "."): v for k, v in over.items()}}
    return run_train(Console(quiet=True), ws, "demo", overrides, progress=False)


def metrics(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln]
    return [{k: v for k, v in r.items() if k not in ("seconds", "eval_seconds")} for r in rows]


def cli(ws: Path, *args: str) -> subprocess.Popen:
    """``mmvid train`` in its own process group, as a shell runs it (Ctrl-C reaches the whole group)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "mmvid.cli", "train", "-w", str(ws), *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def cli_args(name: str, epochs: int) -> list[str]:
    return ["--recipe", "demo", "--device", "cpu", "--encoder", "small", "--batch-size", "8", "--epochs", str(epochs),
            "--run-name", name]


def wait_for_epoch(run: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the first epoch's metrics line and checkpoint are written."""
    path, t0 = run / "metrics.jsonl", time.time()
    while time.time() - t0 < timeout:
        if path.exists() and path.read_text().strip() and (run / CKPT_LAST).exists():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no finished epoch in {timeout}s")


# ----------------------------------------------------------------------------- DDP


def test_two_gloo_processes_agree_and_match_one_process(ws):
    """--gpus 2 on CPU = 2 gloo processes, 8 clips each per step; the 1-process run takes 16 per step.

    The sampler gives both runs the same global batches, so they differ only through BatchNorm's
    batch statistics (per rank over 8 clips vs over 16) and summation order. Stated tolerance after
    3 epochs: 0.01 on every loss and on rho, 0.1 on the scores s_m (sums over the 30 train clips);
    accuracies are left out, since argmax over a near-chance model's logits flips on such differences.
    Ranks must end with bit-identical parameters.
    """
    two = train_run(ws, "ddp2", gpus=2)
    one = train_run(ws, "ddp1", data__batch_size=16)
    ck = load_checkpoint(two / CKPT_LAST)
    assert ck["world_size"] == 2 and len(ck["rank_fingerprints"]) == 2
    assert ck["rank_fingerprints"][0] == ck["rank_fingerprints"][1]
    assert len(ck["rank_rng"]) == 2
    m2, m1 = metrics(two)[-1], metrics(one)[-1]
    assert m1["epoch"] == m2["epoch"] == 2
    tolerance = {"train_loss": 0.01, "test_loss": 0.01, "train_rho": 0.01, "test_rho": 0.01, "s_audio": 0.1, "s_video": 0.1}
    for key, tol in tolerance.items():
        assert abs(m1[key] - m2[key]) <= tol, (key, m1[key], m2[key])
    # Sharded evaluation summed across ranks counts every train clip once (s_m sums 30 probabilities).
    assert 30 * 0.05 < m2["s_audio"] < 30 * 0.2


def test_sampler_gives_w_ranks_the_global_batches_of_one_process():
    """Rank r's k-th batch of b clips + the other ranks' = the 1-process run's k-th batch of W * b clips;
    the order depends on seed + epoch only, and ``skip`` resumes inside an epoch."""
    from mmvid.distributed.collectives import ResumableSampler

    n, b, world = 30, 4, 2
    one = ResumableSampler(n, 1, 0, seed=3)
    ranks = [ResumableSampler(n, world, r, seed=3) for r in range(world)]
    for s in (one, *ranks):
        s.set_epoch(5)
    order, shares = list(one), [list(s) for s in ranks]
    for k in range(len(shares[0]) // b):
        merged = sorted(i for share in shares for i in share[k * b:(k + 1) * b])
        assert merged == sorted(order[k * world * b:(k + 1) * world * b])
    again = ResumableSampler(n, 1, 0, seed=3)
    again.set_epoch(5)
    again.skip = 12
    assert len(again) == n - 12 and list(again) == order[12:] and len(again) == n
    again.set_epoch(6)
    assert list(again) != order


def test_error_on_ranks_is_one_line(ws):
    with pytest.raises(MmvidError, match=r"distributed training failed on rank \d: --amp fp16 needs a CUDA device"):
        train_run(ws, "ddp-bad", gpus=2, amp="fp16")


def _rank1_aborts(local_rank: int, *args) -> None:
    """A spawned rank body: rank 1 dies of SIGABRT before it can write an error file, rank 0 waits."""
    if local_rank == 1:
        os.abort()
    time.sleep(300)  # stopped by the parent once rank 1 has died


def test_rank_killed_by_a_signal_is_named(tmp_path):
    """A rank that dies of a signal writes no error file; the line still names it, and the signal."""
    from mmvid.config import resolve_config
    from mmvid.distributed.launch import _spawn

    cfg = resolve_config("demo", {**BASE, "gpus": 2})
    with pytest.raises(MmvidError, match=r"failed on rank 1: process 1 terminated with signal SIGABRT"):
        _spawn(cfg, tmp_path / "none.h5", tmp_path / "run", resume=False, progress=False, worker=_rank1_aborts)


def test_failure_on_one_rank_ends_the_run(ws, tmp_path):
    """NaN spectrograms in exactly the clips rank 1 gets first: rank 1 stops, rank 0 (waiting in the
    gradient all-reduce) is stopped too, and the parent names the rank, the epoch and the step."""
    import shutil

    import h5py

    from mmvid.config import resolve_config
    from mmvid.data.cache import read_info
    from mmvid.distributed.collectives import ResumableSampler
    from mmvid.engine.loaders import make_splits

    cache = tmp_path / "poisoned.h5"
    shutil.copy(ws / "caches" / "demo.h5", cache)
    cfg = resolve_config("demo", BASE)
    train_rows = make_splits(read_info(cache), cfg.data.val_fraction, cfg.seed).train
    sampler = ResumableSampler(len(train_rows), 2, 1, cfg.seed)
    sampler.set_epoch(0)
    first = sorted(int(train_rows[i]) for i in list(sampler)[: cfg.data.batch_size])
    with h5py.File(cache, "r+") as f:
        for row in first:
            f["spectrogram"][row] = float("nan")
    with pytest.raises(MmvidError, match=r"failed on rank 1: cache .*poisoned.h5 is damaged \(NaN or inf in the audio .* at epoch 1, step 0\).*--force.*other processes were stopped"):
        train_run(ws, "one-rank-fails", gpus=2, data__dataset=str(cache))


# ----------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def reference(ws) -> list[dict]:
    """An uninterrupted 2-epoch run, batch 8 (4 steps per epoch)."""
    return metrics(train_run(ws, "ref", epochs=2))


def test_stop_mid_epoch_then_resume_is_exact(ws, reference, monkeypatch):
    """A stop request (Ctrl-C) seen at the 7th check saves a mid-epoch checkpoint: the loop checks after
    each of the 4 steps of an epoch and once after its evaluation, so that is epoch 2 after 2 of 4 batches."""
    from mmvid.engine import progress

    calls = {"n": 0}

    def requested(self, all_reduce=None):
        calls["n"] += 1
        return calls["n"] == 7

    monkeypatch.setattr(progress.StopRequest, "requested", requested)
    with pytest.raises(MmvidError, match="training interrupted; its state is saved"):
        train_run(ws, "stopped", epochs=2)
    run = ws / "runs" / "stopped"
    ck = load_checkpoint(run / CKPT_LAST)
    assert ck["epoch"] == 0 and ck["partial"]["batch"] == 2 and ck["step"] == 6
    assert len(metrics(run)) == 1
    monkeypatch.undo()
    run_train(Console(quiet=True), ws, None, {}, resume="stopped", progress=False)
    assert metrics(run) == reference


# Every optimiser and schedule (mmvid.engine.optim), each with options that change the optimizer's groups or
# steps: 3 epochs of 4 batches, the schedule moving every epoch.
OPTIM_CASES = {
    "adam-step": {"optim.step_size": 1, "optim.gamma": 0.5},
    "adamw-cosine": {"optim.name": "adamw", "optim.weight_decay": 0.01, "optim.schedule": "cosine", "optim.min_lr": 1e-4},
    "sgd-nesterov-warmup_cosine": {"optim.name": "sgd", "optim.nesterov": True, "optim.lr": 0.01,
                                   "optim.schedule": "warmup_cosine", "optim.warmup_epochs": 1,
                                   "optim.no_decay_norm_bias": True, "optim.lr_scale": {"audio": 0.5}},
    "adam-none-accumulate2": {"optim.schedule": "none", "optim.accumulate": 2},
}


@pytest.mark.parametrize("case", list(OPTIM_CASES))
def test_stop_mid_epoch_then_resume_is_exact_with_every_optimiser_and_schedule(ws, monkeypatch, case):
    """A stop in epoch 2 after 2 of its 4 batches, then --resume: the metrics (learning rate included) equal an
    uninterrupted run's, with each optimiser and schedule. The stop is asked for at the check after the 2nd batch
    of epoch 2: the 7th check (4 per epoch after each step + 1 after evaluation), or the 4th under accumulate 2
    (checks only between optimizer steps, after batches 2 and 4, + 1 after evaluation)."""
    from mmvid.engine import progress

    over = {k.replace(".", "__"): v for k, v in OPTIM_CASES[case].items()}
    reference = metrics(train_run(ws, f"ref-{case}", epochs=3, **over))
    nth = 4 if OPTIM_CASES[case].get("optim.accumulate") == 2 else 7
    calls = {"n": 0}

    def requested(self, all_reduce=None):
        calls["n"] += 1
        return calls["n"] == nth

    monkeypatch.setattr(progress.StopRequest, "requested", requested)
    with pytest.raises(MmvidError, match="training interrupted; its state is saved"):
        train_run(ws, f"stopped-{case}", epochs=3, **over)
    run = ws / "runs" / f"stopped-{case}"
    ck = load_checkpoint(run / CKPT_LAST)
    assert ck["epoch"] == 0 and ck["partial"]["batch"] == 2
    monkeypatch.undo()
    run_train(Console(quiet=True), ws, None, {}, resume=f"stopped-{case}", progress=False)
    assert metrics(run) == reference
    assert len({r["lr"] for r in reference}) == (1 if "none" in case else 3)  # the schedule moved every epoch
    sessions = json.loads((run / "run.json").read_text())["sessions"]  # run.json: the start and the resume
    assert [s["resumed"] for s in sessions] == [False, True] and sessions[1]["start_epoch"] == 1


def test_accumulation_steps_the_optimizer_once_per_group(ws):
    """4 batches per epoch: accumulate 3 makes groups of 3 and 1, so 2 epochs take 4 optimizer steps (Adam's
    step count), against 8 without accumulation."""
    for k, steps in ((1, 8), (3, 4)):
        run = train_run(ws, f"accumulate-{k}", epochs=2, optim__accumulate=k)
        state = load_checkpoint(run / CKPT_LAST)["optimizer"]["state"]
        assert {float(s["step"]) for s in state.values()} == {steps}


def test_resume_drops_a_metrics_line_torn_by_a_kill(ws, reference, monkeypatch):
    """A kill during the append of an epoch's metrics.jsonl line leaves half a line; the resume drops it
    (that epoch is redone from the checkpoint before it) instead of failing on the JSON."""
    from mmvid.engine import progress

    calls = {"n": 0}

    def requested(self, all_reduce=None):  # the stop of the test above: epoch 2 after 2 of 4 batches
        calls["n"] += 1
        return calls["n"] == 7

    monkeypatch.setattr(progress.StopRequest, "requested", requested)
    with pytest.raises(MmvidError, match="training interrupted"):
        train_run(ws, "torn", epochs=2)
    monkeypatch.undo()
    run = ws / "runs" / "torn"
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"epoch": 1, "train_lo')
    run_train(Console(quiet=True), ws, None, {}, resume="torn", progress=False)
    assert metrics(run) == reference


def test_kill9_mid_epoch_then_resume_is_exact(ws, reference):
    """kill -9 during epoch 2 loses at most that epoch; the resumed run ends with identical metrics."""
    proc = cli(ws, *cli_args("killed", 2))
    run = ws / "runs" / "killed"
    wait_for_epoch(run, proc)
    time.sleep(0.05)  # into epoch 2, which takes far longer than this even on a fast machine
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists(), "the run finished before it was killed"
    done = subprocess.run([sys.executable, "-m", "mmvid.cli", "train", "-w", str(ws), "--resume", "killed"],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert metrics(run) == reference


def test_ctrl_c_saves_and_exits_cleanly(ws):
    """Ctrl-C to the process group, a DataLoader worker included: saved, one line, exit code 2, exact resume.

    Compared with an uninterrupted run that also loads through one worker (runs with and without a
    worker were seen to differ in the last bits of the loss), and the comparison is exact.
    """
    reference = metrics(train_run(ws, "ref-worker", epochs=2, data__workers=1))
    proc = cli(ws, *cli_args("ctrlc", 2), "--workers", "1")
    run = ws / "runs" / "ctrlc"
    wait_for_epoch(run, proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err
    assert "training interrupted; its state is saved" in " ".join(err.split())
    run_train(Console(quiet=True), ws, None, {}, resume="ctrlc", progress=False)
    assert metrics(run) == reference


def test_same_command_under_torchrun(ws):
    """``torchrun --nproc-per-node 2 -m mmvid.cli train ...``: the ranks agree on one run folder and weights."""
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "mmvid.cli",
                           "train", "-w", str(ws), *cli_args("torchrun", 1)],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    ck = load_checkpoint(ws / "runs" / "torchrun" / CKPT_LAST)
    assert ck["world_size"] == 2 and ck["rank_fingerprints"][0] == ck["rank_fingerprints"][1]
    assert done.stdout.count("run torchrun:") == 1  # only rank 0 reports


@pytest.mark.slow
def test_ddp_ctrl_c_then_resume_is_exact(ws):
    """Ctrl-C to a --gpus 2 run (the whole process group, as a terminal sends it): every rank stops at the
    same step and saves its RNG and partial sums; the resumed run ends exactly as an uninterrupted one."""
    ref = metrics(train_run(ws, "ddp-ref", gpus=2, epochs=2, data__batch_size=4))
    proc = cli(ws, *cli_args("ddp-ctrlc", 2), "--gpus", "2", "--batch-size", "4")
    run = ws / "runs" / "ddp-ctrlc"
    wait_for_epoch(run, proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "training interrupted; its state is saved" in " ".join(err.split())
    assert len(load_checkpoint(run / CKPT_LAST)["rank_rng"]) == 2
    run_train(Console(quiet=True), ws, None, {}, resume="ddp-ctrlc", progress=False)
    assert metrics(run) == ref


# ----------------------------------------------------------------------------- numerics


def test_nan_loss_names_epoch_and_step(ws, monkeypatch):
    from mmvid.augment import base

    real, calls = base.mixed_cross_entropy, {"n": 0}

    def poisoned(logits, y, mix):
        calls["n"] += 1
        loss = real(logits, y, mix)
        return loss * float("nan") if calls["n"] == 6 else loss

    monkeypatch.setattr(base, "mixed_cross_entropy", poisoned)
    with pytest.raises(MmvidError, match=r"loss became nan at epoch 2, step 5;"):
        train_run(ws, "nan", data__batch_size=8)  # 4 steps per epoch: the 6th is epoch 2, step index 5


def test_bf16_autocast_on_cpu(ws):
    from mmvid.engine.runtime import autocast

    conv = torch.nn.Conv2d(3, 4, 3)
    with autocast(torch.device("cpu"), "bf16"):
        assert conv(torch.randn(1, 3, 8, 8)).dtype == torch.bfloat16
    run = train_run(ws, "bf16", amp="bf16", epochs=1)
    (m,) = metrics(run)
    assert all(torch.isfinite(torch.tensor(m[k])) for k in ("train_loss", "test_loss"))


def test_cache_on_device_feeds_the_same_batches(ws):
    """--cache-on-gpu (here on the CPU device) serves exactly what the DataLoader serves."""
    ref = metrics(train_run(ws, "loader", epochs=1))
    dev = metrics(train_run(ws, "ondevice", epochs=1, data__cache_on_gpu=True))
    assert dev == ref


def test_device_loader_crops_on_the_device(ws):
    """Train-time crops on the DeviceLoader: one random resized crop per clip, output at crop_size; drawn by the
    loader and applied to the batch by ``to_device`` (training on a GPU), or per clip (on the CPU)."""
    from mmvid.config import resolve_config
    from mmvid.data.cache import read_info
    from mmvid.data.crop import BOX_KEY
    from mmvid.engine.loaders import make_loader, to_device

    cfg = resolve_config("demo", {**BASE, "data.cache_on_gpu": True, "data.crop_size": 24, "data.random_crop": True})
    info = read_info(ws / "caches" / "demo.h5")
    size = info.shapes["frames"][1]
    for per_clip in (True, False):
        loader = make_loader(info, info.indices("train")[:10], cfg, train=True, device=torch.device("cpu"))
        assert loader.dataset.crop_in_loader  # device "cpu"
        loader.dataset.crop_in_loader = per_clip
        batches = list(loader)
        assert len(loader) == len(batches) == 2 and sum(len(y) for _, y in batches) == 10
        inputs, y = batches[0]
        side = 24 if per_clip else size
        assert inputs["video"].shape == (8, 3, 3, side, side) and inputs["audio"].shape[:2] == (8, 1)
        assert inputs["video"].dtype == torch.uint8  # frames stay uint8 until the batch is on the device
        assert (BOX_KEY in inputs) == (not per_clip)
        finished = to_device(inputs, torch.device("cpu"))
        video = finished["video"]
        assert BOX_KEY not in finished and video.shape == (8, 3, 3, 24, 24)
        assert video.dtype == torch.float32 and torch.isfinite(video).all()


@needs_cuda
def test_cuda_fp16_with_cache_on_gpu(ws):
    run = train_run(ws, "cuda-fp16", device="cuda", amp="fp16", epochs=1, data__cache_on_gpu=True)
    ck = load_checkpoint(run / CKPT_LAST)
    assert ck["scaler"]["scale"] > 0 and torch.isfinite(torch.tensor(metrics(run)[0]["train_loss"]))
