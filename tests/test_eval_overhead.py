"""The cost of evaluation (issue 15, section 5): ``monitor_train`` as a fraction of the train rows (a fixed,
seeded subsample; plug-ins that steer on train-set statistics keep what they need) and ``eval_every``.

Runs train the small encoder on the tiny demo cache of conftest (batch 8); their names start with ``ev-``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console

from mmvid.config import TrainConfig, resolve_config
from mmvid.engine.checkpoints import load_checkpoint
from mmvid.engine.evaluation import evaluates_at, monitor_plan, monitor_rows
from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS
from mmvid.workflows import run_train
from mmvid.workspace import CKPT_BEST, CKPT_LAST

BASE = {"data.dataset": "demo", "device": "cpu", "model.encoder": "small", "data.batch_size": 8, "epochs": 3}
MONITOR = ("train_acc", "train_acc_audio", "train_acc_video", "train_rho", "rho", "s_audio", "s_video")
CLOCK = ("seconds", "eval_seconds")


@pytest.fixture(scope="module")
def ws(tiny_ws) -> Path:
    return tiny_ws


def train(ws: Path, name: str, console: Console | None = None, **over) -> Path:
    overrides = {**BASE, "run_name": name, **{k.replace("__", "."): v for k, v in over.items()}}
    return run_train(console or Console(quiet=True), ws, "demo", overrides, progress=False)


def lines(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln]


def figures(rec: dict, held_out: bool = True) -> dict:
    """A metrics line without its wall-clock fields (and without its val/test keys unless ``held_out``)."""
    return {k: v for k, v in rec.items() if k not in CLOCK and (held_out or not k.startswith(("val_", "test_")))}


@pytest.fixture(scope="module")
def every(ws) -> Path:
    """The reference: evaluation and the whole-train-set monitor after every epoch."""
    return train(ws, "ev-every")


@pytest.fixture(scope="module")
def every2(ws) -> Path:
    return train(ws, "ev-every2", eval_every=2)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("value,want", [(True, 1.0), (False, 0.0), ("true", 1.0), ("off", 0.0), ("0.25", 0.25), (1, 1.0)])
def test_monitor_train_reads_old_switches_and_fractions(value, want):
    assert resolve_config(None, {"monitor_train": value}).monitor_train == want


@pytest.mark.parametrize("key,value,needle", [
    ("monitor_train", 1.5, "[0, 1] (true = 1, false = 0)"), ("monitor_train", "maybe", "[0, 1]"),
    ("monitor_train", -0.1, "[0, 1]"), ("eval_every", 0, "an integer in [1, 1000000]"), ("eval_every", 1.5, "integer"),
])
def test_bad_values_are_one_line(key, value, needle):
    with pytest.raises(MmvidError) as e:
        resolve_config(None, {key: value})
    assert needle in str(e.value) and f"config {key}=" in str(e.value) and "\n" not in str(e.value)


def test_runs_of_older_configs_stay_reusable():
    """A config.yaml written before this change says ``monitor_train: true`` and has no eval_every: a sweep
    asking for the defaults reuses it; one asking for a subsample or eval_every 2 does not."""
    from mmvid.sweeps.state import config_difference

    old = TrainConfig().to_dict()
    old["monitor_train"] = True
    del old["eval_every"]
    old = yaml.safe_load(yaml.safe_dump(old))
    assert config_difference(old, resolve_config(None, {})) is None
    assert config_difference({**old, "monitor_train": False}, resolve_config(None, {"monitor_train": 0})) is None
    assert "monitor_train" in config_difference(old, resolve_config(None, {"monitor_train": 0.5}))
    assert "eval_every" in config_difference(old, resolve_config(None, {"eval_every": 2}))


# ----------------------------------------------------------------------------- which rows, which epochs


def test_monitor_subsample_is_fixed_seeded_and_sized():
    rows = np.arange(1000, 1437)  # positions in a cache, as splits.train holds them
    sub = monitor_rows(rows, 0.1, seed=3)
    assert len(sub) == round(0.1 * len(rows)) and len(set(sub)) == len(sub) and set(sub) <= set(rows)
    assert np.array_equal(sub, np.sort(sub))  # cache order: reads stay sequential
    assert np.array_equal(sub, monitor_rows(rows, 0.1, seed=3))  # the same rows every epoch and after a resume
    assert not np.array_equal(sub, monitor_rows(rows, 0.1, seed=4))
    assert np.array_equal(monitor_rows(rows, 1.0, 0), rows) and len(monitor_rows(rows, 0.0, 0)) == 0
    assert len(monitor_rows(rows, 1e-6, 0)) == 1  # a positive fraction measures at least one clip
    shares = [sub[r::3] for r in range(3)]  # DDP: each rank its share, together the subsample once
    assert np.array_equal(np.sort(np.concatenate(shares)), sub)


def test_eval_every_evaluates_every_nth_and_the_last_epoch():
    cfg = resolve_config(None, {"epochs": 7, "eval_every": 3})
    assert [e for e in range(7) if evaluates_at(cfg, e)] == [2, 5, 6]
    assert all(evaluates_at(resolve_config(None, {"epochs": 4}), e) for e in range(4))


def plan(over: dict) -> tuple[float, str | None]:
    load_plugins()
    cfg = resolve_config(None, over)
    mods = cfg.data.modalities
    return monitor_plan(cfg, AUGMENTS.build(cfg.augment.name, cfg.augment, mods), BALANCERS.build(cfg.balance.name, cfg.balance, mods))


def test_what_each_plugin_needs_of_the_monitor():
    assert plan({"monitor_train": 0.3}) == (0.3, None)
    assert plan({"monitor_train": 0}) == (0.0, None)
    frac, note = plan({"monitor_train": 0.3, "augment.name": "bmm"})
    assert frac == 1.0 and "augment.name=bmm" in note and "whole train set" in note and "\n" not in note
    assert plan({"monitor_train": 0, "augment.name": "bmm", "augment.args.rho_split": "val"}) == (0.0, None)
    assert plan({"monitor_train": 0, "augment.name": "mm", "balance.name": "ogm-ge"}) == (0.0, None)


# ----------------------------------------------------------------------------- training


def test_eval_every_logs_evaluated_epochs_only_and_never_changes_training(every2, every):
    """eval_every 2 over 3 epochs: val/test after epochs 2 and 3 (the last), with the very figures of the run
    that evaluates every epoch (evaluation draws nothing from the training's random state); the best
    checkpoint is the evaluated epoch of highest val accuracy (the first on ties)."""
    got, ref = lines(every2), lines(every)
    assert figures(got[0]) == figures(got[0], held_out=False) and all(k in got[0] for k in MONITOR)
    assert len(got) == len(ref) == 3
    for g, r in zip(got, ref):
        assert figures(g) == figures(r, held_out=g["epoch"] in (1, 2))
    best = max((r for r in got if "val_acc" in r), key=lambda r: (r["val_acc"], -r["epoch"]))
    summary = json.loads((every2 / "summary.json").read_text())
    assert summary["best"] == {"val_acc": best["val_acc"], "epoch": best["epoch"], "test_acc": best["test_acc"],
                               "selected_on": "val"}
    assert summary["last"]["test_acc"] == got[-1]["test_acc"]
    assert load_checkpoint(every2 / CKPT_BEST)["epoch"] == best["epoch"] != 0
    assert load_checkpoint(every2 / CKPT_LAST)["epoch"] == 2


def test_monitor_subsample_and_off(ws, every):
    """monitor_train 0.5 measures round(0.5 N) train clips; 0 drops the monitor's keys; neither changes training."""
    ref = lines(every)
    half = train(ws, "ev-half", epochs=2, monitor_train=0.5)
    ck = load_checkpoint(half / CKPT_LAST)
    n_train = len(ck["splits"]["train"])
    assert {s["n"] for s in ck["train_scores"].values()} == {round(0.5 * n_train)}
    assert load_checkpoint(every / CKPT_LAST)["train_scores"]["audio"]["n"] == n_train
    off = train(ws, "ev-off", epochs=2, monitor_train=False)
    for r, h, o in zip(ref, lines(half), lines(off)):  # the first two epochs of the reference
        assert not any(k in o for k in MONITOR) and all(k in h for k in MONITOR)
        # (train_loss is the monitor's eval-mode loss when there is a monitor, so it is not compared)
        for k in ("train_acc_batch", "val_acc", "val_loss", "test_acc", "test_loss", "test_rho"):
            assert r[k] == h[k] == o[k], k
    assert load_checkpoint(ws / "runs" / "ev-off" / CKPT_LAST)["train_scores"] is None


def test_bmm_keeps_its_full_pass(ws):
    """B-MM steers on rho over the whole train set: monitor_train 0.2 is raised to 1, with a note."""
    console = Console(record=True, width=200)
    run = train(ws, "ev-bmm", console=console, epochs=2, monitor_train=0.2, augment__name="bmm", augment__args__warmup=0)
    ck = load_checkpoint(run / CKPT_LAST)
    assert {s["n"] for s in ck["train_scores"].values()} == {len(ck["splits"]["train"])}
    said = console.export_text()
    assert "note: monitor_train=0.2 raised to 1: augment.name=bmm" in said
    assert all(r["s_audio"] is not None for r in lines(run))


def test_bmm_on_val_steers_every_epoch_whatever_eval_every(ws):
    """augment.rho_split=val reads the val split after every epoch, though eval_every logs it at the last only."""
    run = train(ws, "ev-bmm-val", epochs=2, eval_every=2, monitor_train=0, augment__name="bmm", augment__args__warmup=0,
                augment__args__rho_split="val")
    got = lines(run)
    assert "val_acc" not in got[0] and "val_acc" in got[1]
    assert got[0]["bmm_rho"] is None and got[1]["bmm_rho"] is not None  # rho from epoch 1's val pass


def test_readers_cope_with_eval_every(every2, tmp_path):
    """What reads metrics.jsonl: the curves figure, the regime figures, diagnose's curves."""
    from mmvid.results.diagnosis.curves import curves
    from mmvid.results.evaluation import regime
    from mmvid.results.figures import plot_curves

    run, recs = every2, lines(every2)
    pngs = plot_curves(run, tmp_path / "curves")
    assert pngs and all(p.exists() for p in pngs)
    reg = regime(run)
    assert reg.epochs == 3 and reg.fused_test == recs[-1]["test_acc"]
    c = curves(recs, ["audio", "video"])
    assert c["test_acc_audio"][0] is None and c["test_acc_audio"][-1] == recs[-1]["test_acc_audio"]
    assert all(v is not None for v in c["train_acc_audio"])


def test_stop_then_resume_with_eval_every_is_exact(ws, every2, monkeypatch):
    """A Ctrl-C in epoch 2 (not evaluated under eval_every 2) then --resume gives the uninterrupted run's lines."""
    from mmvid.engine import progress

    steps = -(-len(load_checkpoint(every2 / CKPT_LAST)["splits"]["train"]) // BASE["data.batch_size"])
    calls = {"n": 0}

    def requested(self, all_reduce=None):  # checked after each step and once after each epoch's evaluation
        calls["n"] += 1
        return calls["n"] == steps + 1 + 2  # after the 2nd step of epoch 2

    monkeypatch.setattr(progress.StopRequest, "requested", requested)
    with pytest.raises(MmvidError, match="training interrupted"):
        train(ws, "ev-stop", eval_every=2)
    assert load_checkpoint(ws / "runs" / "ev-stop" / CKPT_LAST)["partial"]["batch"] == 2
    monkeypatch.undo()
    run = run_train(Console(quiet=True), ws, None, {}, resume="ev-stop", progress=False)
    assert [figures(r) for r in lines(run)] == [figures(r) for r in lines(every2)]
