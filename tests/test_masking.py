"""A masked modality is absent for the whole model: a prediction from some modalities never depends on the
input of a modality left out, with or without the pre-fusion calibration, for every registered fusion and
for every caller of the masked prediction (unimodal scores, B-MM's rho, balancers, Shapley coalitions,
robustness' per-modality accuracy).

The calibration module is the identity at initialisation, so the models here get random values in the
layers that start at zero; each test first checks that the calibration then does mix the modalities.
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from mmvid.augment.base import Mix
from mmvid.balance import agm, cml, lfm, mbsd, opm, valuate
from mmvid.balance.base import scored_logits
from mmvid.cli import app
from mmvid.config import TrainConfig
from mmvid.engine.evaluation import evaluate_model
from mmvid.errors import MmvidError
from mmvid.models.classifier import MultimodalClassifier
from mmvid.plugins import load_plugins
from mmvid.registry import FUSIONS

load_plugins()

SHAPES = {"audio": (1, 16, 16), "video": (2, 3, 16, 16), "flow": (2, 2, 16, 16)}
AV = ["audio", "video"]
CLASSES = 4
B = 6


def batch(modalities, seed: int, b: int = B) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, *SHAPES[m], generator=g) for m in modalities}


def model_for(fusion: str, calibrate: bool, modalities=AV, unimodal: str = "mask") -> MultimodalClassifier:
    """A small-encoder model in eval mode whose calibration (when on) is far from the identity."""
    torch.manual_seed(0)
    model = MultimodalClassifier(list(modalities), CLASSES, "small", 4, fusion, calibrate, unimodal=unimodal)
    if calibrate:
        g = torch.Generator().manual_seed(1)
        for m in modalities:
            last = model.calibration.modulate[m][-1]
            last.weight.data = torch.randn(last.weight.shape, generator=g)
            last.bias.data = torch.randn(last.bias.shape, generator=g)
    return model.eval()


def with_changed(inputs: dict[str, torch.Tensor], m: str, seed: int = 99) -> dict[str, torch.Tensor]:
    """The same batch with only modality m's input replaced."""
    return {**inputs, m: batch([m], seed, len(next(iter(inputs.values()))))[m]}


def alone(model, inputs) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.unimodal_logits(model(inputs).raw)


def assert_calibration_mixes(model, inputs, m: str, other: str) -> None:
    """The joint forward's (calibrated) feature of m moves with the other modality's input: so any
    independence below is the masking's doing, not a module that happens to ignore the context."""
    with torch.no_grad():
        a, b = model(inputs), model(with_changed(inputs, other))
    assert torch.equal(a.raw[m], b.raw[m])
    assert not torch.equal(a.features[m], b.features[m])


FUSION_NAMES = FUSIONS.names()


def head_fusions() -> list[str]:
    return [f for f in FUSION_NAMES if hasattr(FUSIONS.build(f, {m: 32 for m in AV}).make_head(CLASSES), "modality_logits")]


def test_the_registry_walk_covers_every_fusion():
    assert {"concat", "sum", "decision", "film", "bigated", "mmtm", "shared", "mmcosine"} <= set(FUSION_NAMES)


@pytest.mark.parametrize("calibrate", [False, True], ids=["plain", "calibrate"])
@pytest.mark.parametrize("fusion", [f for f in FUSION_NAMES if f != "mmtm"])
def test_alone_logits_are_bit_identical_whatever_the_other_input(fusion, calibrate):
    """audio alone is torch.equal when only the video input changes, and video alone when only audio does."""
    model = model_for(fusion, calibrate)
    x = batch(AV, 0)
    if calibrate:
        assert_calibration_mixes(model, x, "audio", "video")
    for m, other in (("audio", "video"), ("video", "audio")):
        assert torch.equal(alone(model, x)[m], alone(model, with_changed(x, other))[m]), (fusion, m)
        assert not torch.equal(alone(model, x)[m], alone(model, with_changed(x, m))[m])  # m's own input counts


@pytest.mark.parametrize("calibrate", [False, True], ids=["plain", "calibrate"])
@pytest.mark.parametrize("fusion", [f for f in head_fusions() if f != "mmtm"])
def test_own_head_alone_logits_ignore_the_other_input(fusion, calibrate):
    """augment.unimodal=head: modality m's own classifier on z_m calibrated with m alone."""
    model = model_for(fusion, calibrate, unimodal="head")
    x = batch(AV, 0)
    for m, other in (("audio", "video"), ("video", "audio")):
        assert torch.equal(alone(model, x)[m], alone(model, with_changed(x, other))[m]), (fusion, m)


@pytest.mark.parametrize("calibrate", [False, True], ids=["plain", "calibrate"])
def test_every_coalition_of_three_modalities_ignores_the_absent_inputs(calibrate):
    mods = ["audio", "video", "flow"]
    model = model_for("concat", calibrate, mods)
    x = batch(mods, 0)
    for absent in mods:
        keep = [m for m in mods if m != absent]
        with torch.no_grad():
            a = model.masked_logits(model(x).raw, keep)
            b = model.masked_logits(model(with_changed(x, absent)).raw, keep)
        assert torch.equal(a, b), absent


def test_mmtm_refuses_the_calibration_with_one_line(tmp_path):
    with pytest.raises(MmvidError, match=r"model\.calibrate=true with model\.fusion=mmtm.*model\.calibrate=false"):
        MultimodalClassifier(AV, CLASSES, "small", 4, "mmtm", True)
    res = CliRunner().invoke(app, ["train", "-w", str(tmp_path), "--fusion", "mmtm", "--calibrate"])
    assert res.exit_code == 2, res.output
    assert "model.fusion=mmtm" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not any(tmp_path.iterdir())  # refused before any work


def test_mmtm_masking_removes_the_feature_but_not_what_the_blocks_passed_on():
    """What holds under MMTM: the audio-alone prediction is bit-identical whatever the video *feature*; what
    does not: the audio feature itself depends on the video *input* (the blocks between encoder stages mix
    them), so audio alone by masking is not independent of the video input."""
    model = model_for("mmtm", False)
    x = batch(AV, 0)
    with torch.no_grad():
        raw = model(x).raw
        moved = model(with_changed(x, "video")).raw
        other_video = {"audio": raw["audio"], "video": moved["video"]}
        assert torch.equal(model.unimodal_logits(raw)["audio"], model.unimodal_logits(other_video)["audio"])
        assert not torch.equal(raw["audio"], moved["audio"])
        assert not torch.equal(alone(model, x)["audio"], alone(model, with_changed(x, "video"))["audio"])


# ----------------------------------------------------------------------------- the calibration's presence


def test_calibration_leaves_absent_modalities_out_of_every_context():
    """present={audio}: audio is compared with itself (c = p_a), as a one-modality model; video passes through."""
    model = model_for("concat", True)
    cal = model.calibration
    g = torch.Generator().manual_seed(3)
    z = {"audio": torch.randn(B, 32, generator=g), "video": torch.zeros(B, 32)}
    with torch.no_grad():
        out, gates = cal(z, present={"audio"})
        p = cal.project["audio"](z["audio"])
        expected, _ = cal._calibrate("audio", z["audio"], p, p)
    assert torch.equal(out["audio"], expected) and out["video"] is z["video"]
    assert set(gates) == {"gate_audio"}


@pytest.mark.parametrize("mods", [AV, ["audio", "video", "flow"]], ids=["two", "three"])
def test_per_sample_presence_agrees_with_the_set_form_row_by_row(mods):
    model = model_for("concat", True, mods)
    g = torch.Generator().manual_seed(4)
    z = {m: torch.randn(B, 32, generator=g) for m in mods}
    keep = torch.ones(len(mods), B)
    keep[1, ::2] = 0  # video absent from the even rows
    masked = {m: z[m] * keep[i, :, None] for i, m in enumerate(mods)}
    with torch.no_grad():
        rows, _ = model.calibration(masked, present=keep)
        full, _ = model.calibration(z)
        part, _ = model.calibration(masked, present=[m for m in mods if m != "video"])
    for m in mods:
        assert torch.equal(rows[m][1::2], full[m][1::2]), m
        assert torch.equal(rows[m][::2], part[m][::2]), m


# ----------------------------------------------------------------------------- mixing


def feature_mix(weights) -> Mix:
    return Mix("feature", torch.tensor([3, 0, 5, 1, 2, 4]), weights, 0.3)


@pytest.mark.parametrize("weights", [{"*": 0.3}, {"video": torch.linspace(0.1, 0.6, B)}], ids=["mixup", "bmm-weak"])
@pytest.mark.parametrize("fusion", [f for f in FUSION_NAMES if f != "mmtm"])
def test_without_calibration_masking_equals_zeroing_the_mixed_features(fusion, weights):
    """With the calibration off, the masked prediction is bit-identical to zeroing the forward's features
    (after its feature-stage mix), the form the balancers' references use; per sample as CML's removal chain."""
    model = model_for(fusion, False)
    mix = feature_mix(weights)
    with torch.no_grad():
        out = model(batch(AV, 0), mix=mix)
        for m in AV:
            zeroed = {k: v if k == m else torch.zeros_like(v) for k, v in out.features.items()}
            assert torch.equal(model.masked_logits(out.raw, {m}, mix), model.classify(zeroed)), m
        keep = torch.ones(2, B)
        keep[1, ::2] = 0
        keep[0, 1::3] = 0
        by_row = {k: z * keep[i, :, None] for i, (k, z) in enumerate(out.features.items())}
        assert torch.equal(model.classify(model.masked_features(out.raw, keep, mix)), model.classify(by_row))


def test_a_row_mixes_nothing_of_a_modality_absent_from_it():
    """Per-sample masks under feature mixing (CML, OPM with calibration): the rows without video are
    bit-identical whatever the video inputs of the whole batch, partners included."""
    model = model_for("concat", True)
    mix = feature_mix({"*": 0.3})
    x = batch(AV, 0)
    keep = torch.ones(2, B)
    keep[1, ::2] = 0
    with torch.no_grad():
        a = model.masked_features(model(x, mix=mix).raw, keep, mix)
        b = model.masked_features(model(with_changed(x, "video"), mix=mix).raw, keep, mix)
    for m in AV:
        assert torch.equal(a[m][::2], b[m][::2]), m
    assert not torch.equal(a["audio"][1::2], b["audio"][1::2])  # rows with video see it (through calibration)


# ----------------------------------------------------------------------------- every caller


def cfg_for(balance: str, **args):
    cfg = TrainConfig()
    cfg.data.modalities = list(AV)
    cfg.balance.name, cfg.balance.args = balance, dict(args)
    return cfg.balance


CALLERS = {
    "scores (OGM-GE, OPM, ATF; B-MM's rho)": lambda net, out, x: scored_logits(net, out, "mask")["audio"],
    "valuate coalitions": lambda net, out, x: valuate.coalition_logits(net, out.raw)[("audio",)],
    "valuate / remix focus rows": lambda net, out, x: net.masked_logits(out.raw, {"audio"}, out.mix,
                                                                         rows=torch.tensor([0, 2, 3]), keep_graph=True),
    "agm pad=feature": lambda net, out, x: agm.AdaptiveGradientModulation(cfg_for("agm", pad="feature"), AV)
    .coalition_logits(net, out, x, ("audio",)),
    "lfm mask": lambda net, out, x: lfm.LFM(cfg_for("lfm", score="mask"), AV).unimodal(net, out)["audio"],
    "mbsd mask": lambda net, out, x: mbsd.MBSD(cfg_for("mbsd", heads="mask"), AV).unimodal(net, out)["audio"],
    "cml removal chain": lambda net, out, x: cml.removal_chain(net, out, torch.tensor([[1, 0]] * B))[1],
    "opm drop": lambda net, out, x: opm.opm_drop(net, out.raw, {"audio": 0.0, "video": 0.5},
                                                 torch.tensor([[1.0] * B, [0.0] * B]), out.mix)[0]["audio"],
}


@pytest.mark.parametrize("mix", [None, {"*": 0.3}], ids=["unmixed", "feature-mixed"])
@pytest.mark.parametrize("caller", list(CALLERS))
def test_every_masking_caller_ignores_the_absent_input_under_calibration(caller, mix):
    model = model_for("concat", True)
    mix = None if mix is None else feature_mix(mix)
    x = batch(AV, 0)
    with torch.no_grad():
        a = CALLERS[caller](model, model(x, mix=mix), x)
        b = CALLERS[caller](model, model(with_changed(x, "video"), mix=mix), with_changed(x, "video"))
    assert torch.equal(a, b)


def test_evaluation_scores_of_audio_alone_are_unchanged_when_the_video_input_is_dropped():
    """evaluate_model's per-modality scores (B-MM's rho, robustness' modality accuracy under --drop video)."""
    model = model_for("concat", True)
    loader = [(batch(AV, s), torch.arange(B) % CLASSES) for s in range(3)]
    clean = evaluate_model(model, loader, torch.device("cpu"))
    dropped = evaluate_model(model, loader, torch.device("cpu"),
                             transform=lambda inputs, y: {**inputs, "video": torch.zeros_like(inputs["video"])})
    assert dropped.modality_score["audio"] == clean.modality_score["audio"]
    assert dropped.modality_correct["audio"] == clean.modality_correct["audio"]
    assert dropped.modality_score["video"] != clean.modality_score["video"]


def test_diagnose_shapley_coalitions_without_video_ignore_the_video_input():
    import numpy as np

    from mmvid.results.diagnosis.passes import split_pass

    model = model_for("concat", True)
    y = torch.arange(B) % CLASSES
    xs = [batch(AV, s) for s in range(2)]
    a = split_pass(model, [(x, y) for x in xs], torch.device("cpu"), np.arange(2 * B))
    b = split_pass(model, [(with_changed(x, "video", 50 + i), y) for i, x in enumerate(xs)], torch.device("cpu"),
                   np.arange(2 * B))
    for s in (frozenset(), frozenset({"audio"})):
        assert np.array_equal(a.prob[s], b.prob[s]), s
    assert not np.array_equal(a.prob[frozenset(AV)], b.prob[frozenset(AV)])
