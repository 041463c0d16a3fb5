"""Quick training smoke runs of every balancer (and MS-Mix, B-MM) through the one engine loop on a tiny
demo cache: the run finishes, its per-epoch coefficients reach metrics.jsonl, and the choices are saved."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from mmvid.config import resolve_config
from mmvid.engine.loop import train
from mmvid.plugins import load_plugins
from mmvid.registry import BALANCERS

load_plugins()

# Each run's log must carry the method's own per-epoch coefficient.
LOG_KEY = {"none": "rho", "amco": "amco_share_audio", "ogm-ge": "ogm_coeff_audio", "gblend": "gblend_w_fused", "pmr": "pmr_coeff_video",
           "greedy": "greedy_d", "umt": "umt_mse_audio", "atf": "atf_lr_ratio_audio", "agm": "agm_coeff_audio",
           "mla": "mla_loss_video", "mmpareto": "mmpareto_alpha_mm_audio", "remix": "remix_active",
           "inforeg": "inforeg_beta_audio", "opm": "opm_q_audio", "reconboost": "reconboost_phase",
           "cml": "cml_penalty", "valuate": "valuate_active", "relearn": "relearn_reinit", "mbsd": "mbsd_kl",
           "lfm": "lfm_alpha_align"}


@pytest.fixture(scope="module")
def demo_cache(tiny_ws):
    return tiny_ws / "caches" / "demo.h5"  # the session's 60-clip demo cache (tests/conftest.py), read only


def tiny(overrides):
    base = {"epochs": 2, "model.width": 4, "data.batch_size": 16, "data.val_fraction": 0.25}
    return resolve_config("demo", {**base, **overrides})


@pytest.mark.parametrize("name", BALANCERS.names())
def test_balancer_trains_on_the_demo(name, demo_cache, tmp_path):
    args = {"none": {}, "gblend": {"super_epoch": 1}, "umt": {"teacher_epochs": 1}, "remix": {"warmup": 1},
            "reconboost": {"epochs_per_stage": 1, "correct_epochs": 1}, "valuate": {"warmup": 1}}.get(name, {})
    cfg = tiny({"balance.name": name, "balance.args": args,
                "model.fusion": {"greedy": "mmtm", "mla": "shared", "reconboost": "shared"}.get(name, "concat"),
                "model.fusion_args": {"combine": "boost"} if name == "reconboost" else {}})
    summary = train(cfg, demo_cache, tmp_path / "run", progress=False)
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [0, 1] and summary["last"]["test_acc"] is not None
    assert all(LOG_KEY[name] in ln for ln in lines), f"{LOG_KEY[name]} missing from metrics.jsonl"
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    # config.yaml holds every setting of the balancer (the given ones and the defaults it ran with)
    from mmvid.registry import BALANCERS

    assert saved["balance"]["name"] == name and {k: saved["balance"]["args"][k] for k in args} == args
    assert list(saved["balance"]["args"]) == list(BALANCERS.settings(name).__dataclass_fields__)
    if name == "gblend":
        assert lines[1]["gblend_w_fused"] != pytest.approx(1 / 3), "weights must be re-estimated after a super-epoch"
    if name == "remix":
        assert lines[0]["remix_active"] == 0 and lines[1]["remix_active"] == 1, "remixing starts after the warm-up"
        assert lines[1]["remix_share_audio"] + lines[1]["remix_share_video"] == pytest.approx(1.0)
    if name == "reconboost":
        assert [ln["reconboost_phase"] for ln in lines] == [1, 2], "a boosting epoch, then a rectification epoch"
    if name == "valuate":  # epoch 2 trains every sample plus its resampled copies: the loop runs them all
        assert lines[0]["valuate_active"] == 0 and lines[1]["valuate_active"] == 1
        extra = int(lines[1]["valuate_copies_audio"] + lines[1]["valuate_copies_video"])
        ck = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
        n, step = len(ck["splits"]["train"]), ck["step"]
        assert extra > 0 and step == math.ceil(n / 16) + math.ceil((n + extra) / 16)
    if name == "umt":
        assert (tmp_path / "run" / "teachers" / "audio" / "checkpoint_last.pt").exists()


@pytest.mark.parametrize("augment", ["bmm", "msmix"])
def test_augment_trains_and_logs_its_ratios(augment, demo_cache, tmp_path):
    cfg = tiny({"augment.name": augment, "augment.bmm.warmup": 1, "model.calibrate": True, "model.fusion": "decision"})
    train(cfg, demo_cache, tmp_path / "run", progress=False)
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    key = "lambda_video" if augment == "bmm" else "msmix_lambda_audio"
    assert all(key in ln for ln in lines)
    if augment == "bmm":
        assert lines[0]["lambda_audio"] == 0 and lines[0]["lambda_video"] == 0, "warm-up epoch mixes nothing"
        assert lines[1]["bmm_rho"] == pytest.approx(lines[0]["rho"]), "epoch 2 uses rho measured after epoch 1"


def test_bmm_rho_split_val_uses_the_validation_rho(demo_cache, tmp_path):
    from mmvid.errors import MmvidError

    cfg = tiny({"augment.name": "bmm", "augment.args.warmup": 1, "augment.args.rho_split": "val"})
    train(cfg, demo_cache, tmp_path / "run", progress=False)
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[1]["bmm_rho"] == pytest.approx(lines[0]["val_rho"]) and lines[0]["val_rho"] != lines[0]["rho"]
    with pytest.raises(MmvidError, match="val_fraction"):
        train(tiny({"augment.name": "bmm", "augment.args.rho_split": "val", "data.val_fraction": 0.0}), demo_cache,
              tmp_path / "run2", progress=False)


def test_msmix_resume_restores_the_intensity_heads(demo_cache, tmp_path):
    import torch

    cfg = tiny({"augment.name": "msmix", "epochs": 1})
    train(cfg, demo_cache, tmp_path / "run", progress=False)
    ck = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
    assert ck["augment"]["heads"] is not None
    cfg.epochs = 2
    train(cfg, demo_cache, tmp_path / "run", resume=True, progress=False)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
