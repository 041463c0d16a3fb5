"""Optimisers and schedules (``optim`` section, mmvid.engine.optim) and a run's provenance (run.json,
mmvid.engine.provenance). Each update rule is recomputed here from its published formula; the schedules are
compared with torch's own schedulers where torch has one."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmvid.config import resolve_config
from mmvid.engine.optim import (
    accumulation_group,
    check_accumulation,
    lr_factor,
    make_optimizer,
    make_scheduler,
    parameter_groups,
)
from mmvid.errors import MmvidError
from mmvid.models.classifier import MultimodalClassifier
from mmvid.registry import BALANCERS
from mmvid.runfiles import RunFileDamaged, read_run_info


def optim_of(**over):
    return resolve_config(None, {f"optim.{k}": v for k, v in over.items()}).optim


def small_model() -> MultimodalClassifier:
    torch.manual_seed(0)
    return MultimodalClassifier(["audio", "video"], 5, "small", 8)


# ----------------------------------------------------------------------------- parameter groups


def test_without_options_the_optimizer_has_the_one_group_of_every_parameter_as_before():
    model = small_model()
    groups = parameter_groups(model, optim_of())
    assert len(groups) == 1 and [id(p) for p in groups[0]["params"]] == [id(p) for p in model.parameters()]


def test_no_decay_norm_bias_exempts_exactly_the_norm_parameters_and_the_biases():
    model = small_model()
    groups = parameter_groups(model, optim_of(no_decay_norm_bias=True, weight_decay=0.05))
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters()) and len(every) == len(set(every))
    # Independently: a parameter is exempt when its module is a norm layer or its name is "bias".
    norm_ids = {id(p) for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d,
                                                                  torch.nn.LayerNorm, torch.nn.GroupNorm))
                for p in m.parameters(recurse=False)}
    bias_ids = {id(p) for n, p in model.named_parameters() if n.endswith(".bias")}
    assert norm_ids and bias_ids
    for g in groups:
        exempt = {id(p) for p in g["params"]} <= norm_ids | bias_ids
        assert g["weight_decay"] == (0.0 if exempt else 0.05)
        assert g["decay"] != exempt


def test_lr_scale_multiplies_each_encoder_lr_and_leaves_fusion_and_head_at_lr():
    model = small_model()
    groups = parameter_groups(model, optim_of(lr=0.01, lr_scale={"audio": 0.5}))
    audio = {id(p) for p in model.encoders["audio"].parameters()}
    for g in groups:
        ids = {id(p) for p in g["params"]}
        assert g["lr"] == (0.005 if ids <= audio else 0.01)
        assert ids <= audio or not ids & audio
    assert groups[0]["modality"] == ""  # the rest of the model first: metrics.jsonl's lr is the base lr
    opt = make_optimizer(groups, optim_of(lr=0.01, lr_scale={"audio": 0.5}))
    sched = make_scheduler(opt, optim_of(lr=0.01, lr_scale={"audio": 0.5}, schedule="cosine"), 4)
    for _ in range(2):
        opt.step()
        sched.step()
    lrs = {g["modality"]: g["lr"] for g in opt.param_groups}
    assert lrs["audio"] == pytest.approx(lrs[""] * 0.5, rel=1e-12)  # the schedule keeps the ratio


def test_lr_scale_and_nesterov_are_checked_in_one_line():
    with pytest.raises(MmvidError, match=r"optim.lr_scale names \['flow'\], not in data.modalities"):
        optim_of(lr_scale={"flow": 2.0})
    with pytest.raises(MmvidError, match=r"optim.lr_scale.audio"):
        optim_of(lr_scale={"audio": 0})
    with pytest.raises(MmvidError, match=r"optim.nesterov=true needs optim.name=sgd"):
        optim_of(nesterov=True)
    with pytest.raises(MmvidError, match=r"optim.min_lr=0.1 is above optim.lr"):
        optim_of(schedule="cosine", min_lr=0.1, lr=0.01)
    with pytest.raises(MmvidError, match=r"optim.schedule.*'linear'"):
        optim_of(schedule="linear")


# ----------------------------------------------------------------------------- update rules


def one_step(optim, w0: torch.Tensor, g: torch.Tensor, steps: int = 1) -> torch.Tensor:
    w = torch.nn.Parameter(w0.clone())
    opt = make_optimizer([w], optim)
    for _ in range(steps):
        w.grad = g.clone()
        opt.step()
    return w.detach()


def test_adamw_decays_the_weights_apart_from_the_adaptive_step():
    """Loshchilov & Hutter Alg. 2, first step: w1 = w0 - lr wd w0 - lr m^/(sqrt(v^) + eps), m^ = g, v^ = g^2."""
    w0, g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.tensor([0.3, 0.1, -0.2], dtype=torch.float64)
    lr, wd = 0.01, 0.1
    expected = w0 - lr * wd * w0 - lr * g / (g.abs() + 1e-8)
    assert torch.allclose(one_step(optim_of(name="adamw", lr=lr, weight_decay=wd), w0, g), expected, rtol=0, atol=1e-15)
    # Adam (the paper's) adds the decay to the gradient instead: a different first step.
    assert not torch.allclose(one_step(optim_of(name="adam", lr=lr, weight_decay=wd), w0, g), expected)


def test_sgd_nesterov_follows_the_nesterov_update():
    """Sutskever et al. as torch states it: d = g + wd w; b_t = mu b_(t-1) + d (b_1 = d); w -= lr (d + mu b_t)."""
    w0, g = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 0.25], dtype=torch.float64)
    lr, mu, wd = 0.1, 0.9, 0.01
    w, b = w0.clone(), None
    for _ in range(3):
        d = g + wd * w
        b = d if b is None else mu * b + d
        w = w - lr * (d + mu * b)
    got = one_step(optim_of(name="sgd", nesterov=True, momentum=mu, lr=lr, weight_decay=wd), w0, g, steps=3)
    assert torch.allclose(got, w, rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------- schedules


def lrs_of(optim, epochs: int) -> list[float]:
    w = torch.nn.Parameter(torch.zeros(1))
    opt = make_optimizer([w], optim)
    sched = make_scheduler(opt, optim, epochs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_is_torch_cosine_annealing_over_the_run():
    """lr_e = min + (lr - min)(1 + cos(pi e / E)) / 2, and torch's CosineAnnealingLR(T_max=E, eta_min=min) within
    the rounding of its recursive form."""
    expected = [0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * e / 10)) / 2 for e in range(10)]
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=10, eta_min=0.001)
    torch_lrs = []
    for _ in range(10):
        torch_lrs.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    got = lrs_of(optim_of(lr=0.1, schedule="cosine", min_lr=0.001), 10)
    assert got == pytest.approx(expected, rel=1e-12) and got == pytest.approx(torch_lrs, rel=1e-9)


def test_warmup_cosine_rises_linearly_then_falls_as_the_cosine():
    got = lrs_of(optim_of(lr=0.2, schedule="warmup_cosine", warmup_epochs=3, min_lr=0.0), 9)
    warm = [0.2 * (e + 1) / 3 for e in range(3)]
    cos = [0.2 * (1 + math.cos(math.pi * (e - 3) / 6)) / 2 for e in range(3, 9)]
    assert got == pytest.approx(warm + cos, rel=1e-12)


def test_step_and_none_schedules():
    assert lrs_of(optim_of(lr=0.1, schedule="step", step_size=2, gamma=0.5), 5) == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    assert lrs_of(optim_of(lr=0.1, schedule="none"), 4) == [0.1] * 4
    assert lr_factor(optim_of(schedule="none"), 4)(3) == 1.0


# ----------------------------------------------------------------------------- gradient accumulation


def test_accumulation_groups_cover_the_epoch_with_a_shorter_last_group():
    assert [accumulation_group(b, 5, 2) for b in range(5)] == [(0, 2), (1, 2), (0, 2), (1, 2), (0, 1)]
    assert [accumulation_group(b, 4, 1) for b in range(4)] == [(0, 1)] * 4
    assert [accumulation_group(b, 4, 3) for b in range(4)] == [(0, 3), (1, 3), (2, 3), (0, 1)]


@pytest.mark.parametrize("name", ["ogm-ge", "mla"])
def test_accumulation_is_refused_with_a_balancer_that_steers_each_step(name):
    cfg = resolve_config(None, {"balance.name": name, "optim.accumulate": 2})
    balancer = BALANCERS.build(name, cfg.balance, cfg.data.modalities)
    with pytest.raises(MmvidError, match=rf"optim.accumulate=2: balancer '{name}' steers each optimizer step"):
        check_accumulation(cfg, balancer)
    plain = resolve_config(None, {"optim.accumulate": 2})
    check_accumulation(plain, BALANCERS.build("none", plain.balance, plain.data.modalities))


# ----------------------------------------------------------------------------- run.json


def test_every_run_folder_holds_run_json_with_versions_command_and_cache(tiny_run):
    info = read_run_info(tiny_run)
    (s,) = info["sessions"]
    assert s["torch"] == torch.__version__ and s["resumed"] is False and s["start_epoch"] == 0
    assert s["python"].count(".") == 2 and s["mmvid"]["version"] and s["host"]
    assert s["gpu_count"] == len(s["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert isinstance(s["argv"], list) and s["world_size"] == 1 and s["plugins"] == {}
    from mmvid.data.cache import read_info
    cache = read_info(s["cache"]["path"])
    assert s["cache"]["fingerprint"] == cache.attrs["fingerprint"]


@pytest.mark.parametrize("text, what", [("[]", "not an object"), ('{"format": 2, "sessions": []}', "format 2"),
                                        ('{"format": 1, "sessions": []}', "not a non-empty list"),
                                        ('{"format": 1, "sessions": [{"started": "x"}]}', "no text 'torch'")])
def test_a_damaged_run_json_is_one_line(tmp_path, text, what):
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(RunFileDamaged, match=what) as e:
        read_run_info(tmp_path)
    assert "\n" not in str(e.value)
    assert read_run_info(tmp_path / "absent") is None


def test_a_balancer_with_its_own_groups_refuses_lr_scale_in_one_line(tiny_ws):
    """ATF moves each encoder into a param group of its own; with optim.lr_scale's groups that would put a
    parameter in two groups (torch's ValueError): one line naming the balancer and the options instead."""
    from rich.console import Console

    from mmvid.workflows import run_train

    over = {"epochs": 1, "run_name": "atf-lr-scale", "model.encoder": "small", "device": "cpu",
            "balance.name": "atf", "optim.lr_scale": {"audio": 0.5}}
    with pytest.raises(MmvidError, match=r"balancer 'atf' sets its own learning rate per encoder.*optim.lr_scale") as e:
        run_train(Console(quiet=True), tiny_ws, "demo", over, progress=False)
    assert "\n" not in str(e.value)
