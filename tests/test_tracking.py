"""Experiment tracking (``--logger``): a demo run's TensorBoard event file read back with TensorBoard's own
EventAccumulator, the CSV logger's rows, W&B offline, the config checks, and a resume that continues the curves."""

from __future__ import annotations

import csv
import json
import math

import pytest
from rich.console import Console

from mmvid.config import resolve_config
from mmvid.errors import MmvidError
from mmvid.runfiles import METRICS, read_jsonl

pytest.importorskip("tensorboard")

EPOCHS = 2


def _train(ws, name, **extra):
    from mmvid.workflows import run_train

    over = {"epochs": EPOCHS, "run_name": name, "data.batch_size": 16, "balance.name": "ogm-ge", **extra}
    return run_train(Console(quiet=True), ws, "demo", over, progress=False)


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event file in {folder}"
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})  # 0: keep every event
    acc.Reload()
    return acc


def _steps_per_epoch(run) -> int:
    """Optimisation steps per epoch of the run: ceil(train rows / batch size), the train rows from the cache."""
    from mmvid.data.cache import read_info
    from mmvid.engine.loaders import make_splits

    cfg = resolve_config(run / "config.yaml", saved=True)
    info = read_info(next((run.parent.parent / "caches").glob("*.h5")))
    splits = make_splits(info, cfg.data.val_fraction, cfg.seed, cfg.protocol)
    return math.ceil(len(splits.train) / cfg.data.batch_size)


@pytest.fixture(scope="module")
def logged_run(tiny_ws):
    return _train(tiny_ws, "tracked-ogm", logger=["tensorboard", "csv"])


def test_tensorboard_events_of_a_demo_run_hold_every_step_and_epoch(logged_run):
    acc = _events(logged_run / "tensorboard")
    tags = set(acc.Tags()["scalars"])
    per_epoch = _steps_per_epoch(logged_run)
    steps = EPOCHS * per_epoch
    # Per step: the loss, the learning rate and OGM-GE's per-step coefficients and ratios, at steps 1..N.
    for tag in ("step/loss", "step/lr", "step/ogm_coeff_audio", "step/ogm_coeff_video", "step/ogm_rho_audio"):
        assert tag in tags, tag
        assert [e.step for e in acc.Scalars(tag)] == list(range(1, steps + 1)), tag
    # Per epoch: every number of metrics.jsonl, one event per epoch at the step that ended it, equal to the line.
    recs = read_jsonl(logged_run / METRICS)
    assert len(recs) == EPOCHS
    for key in ("train_loss", "val_acc", "test_acc", "rho", "ogm_coeff_audio", "seconds"):
        events = acc.Scalars(f"epoch/{key}")
        assert [e.step for e in events] == [per_epoch * (i + 1) for i in range(EPOCHS)]
        assert [e.value for e in events] == pytest.approx([r[key] for r in recs], rel=1e-6)
    assert [e.value for e in acc.Scalars("step/lr")] == pytest.approx([recs[0]["lr"]] * steps)


def test_tensorboard_holds_the_resolved_config_as_hyperparameters(logged_run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = _events(logged_run / "tensorboard")
    content = acc.PluginTagToContent("hparams")
    info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hp = {k: (v.string_value or v.number_value or v.bool_value) for k, v in info.hparams.items()}
    assert hp["balance.name"] == "ogm-ge" and hp["epochs"] == EPOCHS and hp["data.batch_size"] == 16
    assert hp["balance.args.alpha"] == pytest.approx(0.8)
    assert "config/text_summary" in acc.Tags()["tensors"]  # the same config as YAML text


def test_csv_rows_carry_the_same_tags_and_values_as_metrics_jsonl(logged_run):
    with (logged_run / "scalars.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    recs = read_jsonl(logged_run / METRICS)
    val = [float(r["value"]) for r in rows if r["tag"] == "epoch/val_acc"]
    assert val == [r["val_acc"] for r in recs]
    steps = [int(r["step"]) for r in rows if r["tag"] == "step/loss"]
    assert steps == list(range(1, EPOCHS * _steps_per_epoch(logged_run) + 1))


def test_a_resumed_run_continues_its_curves_and_drops_what_followed_its_checkpoint(tiny_ws, monkeypatch):
    """Ctrl-C after the first step saves the position (step 1); a crashed process had also logged step 99 after
    it (kill -9 scenario); the resume logs steps 2..N once each, and step 99 is gone from both loggers."""
    import time

    from torch.utils.tensorboard import SummaryWriter

    from mmvid.engine import progress
    from mmvid.workflows import run_train

    monkeypatch.setattr(progress.StopRequest, "requested", lambda self, all_reduce=None: True)
    with pytest.raises(MmvidError, match="training interrupted"):
        _train(tiny_ws, "tracked-resume", logger=["tensorboard", "csv"])
    monkeypatch.undo()
    run = tiny_ws / "runs" / "tracked-resume"
    time.sleep(1.1)  # event files are named (and read) by their start second
    with SummaryWriter(str(run / "tensorboard")) as w:
        w.add_scalar("step/loss", 9.0, 99)
    with (run / "scalars.csv").open("a") as fh:
        fh.write("99,0,step/loss,9.0\n")
    time.sleep(1.1)
    run_train(Console(quiet=True), tiny_ws, None, {}, resume=str(run), progress=False)
    steps = EPOCHS * _steps_per_epoch(run)
    acc = _events(run / "tensorboard")
    assert [e.step for e in acc.Scalars("step/loss")] == list(range(1, steps + 1))
    assert len(acc.Scalars("epoch/val_acc")) == EPOCHS
    with (run / "scalars.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["tag"] == "step/loss"]
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))


def test_wandb_runs_offline_into_the_run_folder(tiny_ws, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = _train(tiny_ws, "tracked-wandb", logger="wandb", epochs=1)
    run_id = (run / "wandb" / "wandb-id").read_text().strip()
    offline = list((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0


def test_logger_names_settings_and_none_are_checked():
    cfg = resolve_config("demo", {"logger": "tensorboard,csv", "track.args.tensorboard.flush_secs": 5})
    assert cfg.logger == ["tensorboard", "csv"] and cfg.track.args["tensorboard"] == {"flush_secs": 5}
    assert resolve_config("demo", {"logger": ["none"]}).logger == []
    assert resolve_config("demo").logger == [] and resolve_config("demo").track.every == 1  # off by default
    with pytest.raises(MmvidError, match="unknown logger 'tensorbord'; choose one of: csv, tensorboard, wandb"):
        resolve_config("demo", {"logger": "tensorbord"})
    with pytest.raises(MmvidError, match="logger 'tensorboard' has no setting 'flush'"):
        resolve_config("demo", {"track.args.tensorboard.flush": 5})
    with pytest.raises(MmvidError, match="'none' turns logging off"):
        resolve_config("demo", {"logger": ["none", "csv"]})
    with pytest.raises(MmvidError, match="track.group"):
        resolve_config("demo", {"track.group": "../elsewhere"})


def test_a_saved_config_without_tracking_keys_loads_with_logging_off(tiny_run):
    import yaml

    from mmvid.config import config_from_dict

    saved = yaml.safe_load((tiny_run / "config.yaml").read_text())
    saved.pop("logger"), saved.pop("track")
    cfg = config_from_dict(saved, notes=[])
    assert cfg.logger == [] and cfg.track.group is None
    assert json.dumps(cfg.to_dict())  # still a plain, savable config


def test_a_sweep_logs_its_runs_into_one_tensorboard_folder_and_group(tiny_ws):
    from mmvid.sweeps.command import sweep_command
    from mmvid.sweeps.plan import plan_sweep
    from mmvid.sweeps.state import run_state

    opts = dict(seeds=1, quick=True, epochs=1, dataset="demo", only="concat",
                sets={"model.encoder": "small", "model.width": 8, "data.batch_size": 16})
    console = Console(record=True, width=400)
    sweep_command(console, tiny_ws, ["recipes/table1/cremad"], **opts, dry_run=True, loggers=["tensorboard"])
    sweep = plan_sweep(["recipes/table1/cremad"], **opts)
    (run,) = sweep.unique
    assert f"--logger tensorboard --set track.group={sweep.name}" in console.export_text()
    sweep_command(Console(quiet=True), tiny_ws, ["recipes/table1/cremad"], **opts, progress=False,
                  loggers=["tensorboard"])
    folder = tiny_ws / "sweeps" / sweep.name / "tensorboard" / run.name
    acc = _events(folder)
    assert len(acc.Scalars("epoch/test_acc")) == 1 and len(acc.Scalars("step/loss")) >= 1
    assert not (tiny_ws / "runs" / run.name / "tensorboard").exists()
    saved = resolve_config(tiny_ws / "runs" / run.name / "config.yaml", saved=True)
    assert saved.logger == ["tensorboard"] and saved.track.group == sweep.name
    # Logging is no part of what a run learns: the same sweep without --logger reuses the run.
    assert run_state(tiny_ws, run) == "done"
    with pytest.raises(MmvidError, match="unknown logger 'tb'"):
        sweep_command(console, tiny_ws, ["recipes/table1/cremad"], **opts, dry_run=True, loggers=["tb"])


def test_the_cli_takes_repeated_logger_flags_and_refuses_an_unknown_one_in_one_line(tiny_ws):
    from typer.testing import CliRunner

    from mmvid.cli import app

    res = CliRunner().invoke(app, ["train", "-w", str(tiny_ws), "--recipe", "demo", "--logger", "csv",
                                   "--logger", "tensorbord", "--epochs", "1"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "unknown logger 'tensorbord'; choose one of: csv, tensorboard, wandb" in res.output
    res = CliRunner().invoke(app, ["train", "-w", str(tiny_ws), "--recipe", "demo", "--logger", "csv",
                                   "--epochs", "1", "--batch-size", "16", "--run-name", "cli-csv"])
    assert res.exit_code == 0, res.output
    assert resolve_config(tiny_ws / "runs" / "cli-csv" / "config.yaml", saved=True).logger == ["csv"]
    assert (tiny_ws / "runs" / "cli-csv" / "scalars.csv").exists()
