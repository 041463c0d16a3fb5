"""``model.init`` and ``model.aux_loss`` as settings: what the config accepts and refuses, how configs saved
before the keys existed read back, and one epoch on the tiny demo cache with the auxiliary heads.
The computations themselves are checked against the reference code in tests/reference/test_baseline_reference.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from mmvid.cli import app
from mmvid.config import TrainConfig, config_from_dict, resolve_config
from mmvid.engine.checkpoints import load_checkpoint, model_from_checkpoint
from mmvid.errors import MmvidError
from mmvid.results.evaluation import method_label
from mmvid.sweeps.state import config_difference

AUX = {"audio": 0.5, "video": 0.5}


def test_defaults_are_the_reference_init_and_no_auxiliary_heads():
    cfg = TrainConfig()
    assert cfg.model.init == "ogm-ge" and cfg.model.aux_loss == {}


def test_aux_loss_weights_are_checked_and_converted():
    cfg = resolve_config("demo", {"model.aux_loss.audio": "0.5", "model.aux_loss.video": 2})  # as --set gives them
    assert cfg.model.aux_loss == {"audio": 0.5, "video": 2.0}
    for bad, needle in (({"flow": 0.5}, "not in data.modalities"), ({"audio": 0}, "model.aux_loss.audio=0"),
                        ({"audio": -1}, "(0, 1000]"), ({"audio": "half"}, "a finite number"),
                        ({"audio": float("nan")}, "model.aux_loss.audio")):
        with pytest.raises(MmvidError) as err:
            resolve_config("demo", {"model.aux_loss": bad})
        assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_aux_loss_with_a_balancer_is_refused_on_one_line(tmp_path):
    """Balancers build their loss from the augmentation's (several replace it): the auxiliary term would be
    dropped or counted twice, so the combination is an error before anything is built."""
    with pytest.raises(MmvidError, match="cannot be combined with balancer 'ogm-ge'"):
        resolve_config("demo", {"model.aux_loss": AUX, "balance.name": "ogm-ge"})
    res = CliRunner().invoke(app, ["train", "-w", str(tmp_path), "--balance", "remix", "--set",
                                   "model.aux_loss={audio: 0.5}"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "model.aux_loss" in lines[0] and "--balance none" in lines[0], res.output


def test_config_saved_before_model_init_reads_back_as_the_torch_init():
    """A run saved before ``model.init`` existed was trained with PyTorch's defaults: resuming, evaluating or
    reusing it must say so, not today's default; a run saved with the key keeps it."""
    saved = TrainConfig().to_dict()
    del saved["model"]["init"]
    assert config_from_dict(saved).model.init == "torch"
    assert config_from_dict(TrainConfig().to_dict()).model.init == "ogm-ge"
    assert "init" not in saved["model"]  # the caller's dict is left alone
    # a sweep does not reuse such a run folder as if it had the reference init
    assert config_difference(saved, TrainConfig()) == "model.init: 'torch' there, 'ogm-ge' in the sweep"
    old_torch = TrainConfig()
    old_torch.model.init = "torch"
    assert config_difference(saved, old_torch) is None


def test_sweep_compares_the_aux_weights_as_a_whole():
    with_aux = TrainConfig()
    with_aux.model.aux_loss = dict(AUX)
    assert config_difference(TrainConfig().to_dict(), with_aux) == "model.aux_loss: {} there, " \
                                                                    "{'audio': 0.5, 'video': 0.5} in the sweep"
    assert config_difference(with_aux.to_dict(), TrainConfig()).startswith("model.aux_loss: {'audio': 0.5")
    saved = TrainConfig().to_dict()
    del saved["model"]["aux_loss"]  # saved before the key existed: no auxiliary heads
    assert config_difference(saved, TrainConfig()) is None


def test_one_epoch_with_the_aux_heads_logs_their_losses_and_saves_them(tiny_ws):
    """One epoch of concat with Remix's auxiliary heads on the 60-clip demo cache: each head's mean CE reaches
    metrics.jsonl (finite, near ln 10 for 10 classes after one epoch from scratch), the heads are in the
    checkpoint, the checkpoint loads back into the model its config builds, and the run is labelled +aux."""
    from mmvid.workflows import run_train

    run = run_train(Console(quiet=True), tiny_ws, "demo", {"epochs": 1, "run_name": "tiny-aux", "data.batch_size": 16,
                                                           "model.aux_loss": AUX}, progress=False)
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    for m in ("audio", "video"):
        value = lines[0][f"aux_loss_{m}"]
        assert math.isfinite(value) and 0.5 * math.log(10) < value < 2 * math.log(10), (m, value)
    ck = load_checkpoint(run / "checkpoint_last.pt", ("config", "model", "class_names"))
    heads = {k for k in ck["model"] if k.startswith("aux_heads.")}
    assert heads == {f"aux_heads.{m}.{p}" for m in ("audio", "video") for p in ("weight", "bias")}
    model, cfg, _ = model_from_checkpoint(run, "last")  # strict load into the model the saved config builds
    assert cfg.model.aux_loss == AUX and torch.equal(model.aux_heads["audio"].weight, ck["model"]["aux_heads.audio.weight"])
    assert method_label(ck["config"]) == "concat+aux+none"


def test_aux_heads_stay_equal_across_two_gloo_processes(tiny_ws):
    """--gpus 2 on CPU: the auxiliary heads are model parameters used outside the DDP forward; their gradients
    are still averaged (the run ends with bit-identical parameters on both ranks, which the checkpoint checks),
    and the logged head losses are means over both ranks' steps."""
    from mmvid.workflows import run_train

    run = run_train(Console(quiet=True), tiny_ws, "demo", {"epochs": 1, "run_name": "tiny-aux-ddp", "device": "cpu",
                                                           "gpus": 2, "data.batch_size": 8, "model.aux_loss": AUX},
                    progress=False)
    ck = load_checkpoint(run / "checkpoint_last.pt", ("config", "model", "class_names", "rank_fingerprints"))
    assert len(ck["rank_fingerprints"]) == 2 and ck["rank_fingerprints"][0] == ck["rank_fingerprints"][1]
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert all(math.isfinite(line[f"aux_loss_{m}"]) for m in AUX)
