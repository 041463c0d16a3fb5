"""Sum fusion against OGM-GE's ``SumFusion`` (GeWu-Lab/OGM-GE_CVPR2022, models/fusion_modules.py),
re-implemented below from reading it: two linear layers, output = fc_x(x) + fc_y(y) with x the audio
and y the visual feature (models/basic_model.py calls fusion_module(a, v))."""

from __future__ import annotations

import pytest
import torch
from _methods_util import CLASSES, WIDTH, make_batch, make_cfg, make_model
from torch import nn

from mmvid.augment.base import Mix
from mmvid.config import resolve_config
from mmvid.engine.model import build_model
from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import FUSIONS

load_plugins()
AV = ["audio", "video"]
D = 8 * WIDTH


class RefSumFusion(nn.Module):
    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.fc_x = nn.Linear(input_dim, output_dim)
        self.fc_y = nn.Linear(input_dim, output_dim)

    def forward(self, x, y):
        return x, y, self.fc_x(x) + self.fc_y(y)


def reference_from(model) -> RefSumFusion:
    """The reference module holding mmvid's weights (fc_x <- audio head, fc_y <- video head)."""
    ref = RefSumFusion(D, CLASSES)
    ref.fc_x.load_state_dict(model.head.heads["audio"].state_dict())
    ref.fc_y.load_state_dict(model.head.heads["video"].state_dict())
    return ref


def test_sum_logits_equal_the_reference():
    model = make_model(make_cfg(AV, fusion="sum"))
    inputs, _ = make_batch(AV, 6)
    with torch.no_grad():
        out = model(inputs)
        _, _, expected = reference_from(model)(out.features["audio"], out.features["video"])
    assert torch.allclose(out.logits, expected, atol=1e-6)
    assert sum(p.numel() for p in model.head.parameters()) == sum(p.numel() for p in reference_from(model).parameters())


def test_feature_form_is_one_setting_away():
    cfg = make_cfg(AV, fusion="sum")
    cfg.model.fusion_args = {"form": "feature"}
    model = make_model(cfg)
    feats = {m: torch.randn(4, D) for m in AV}
    with torch.no_grad():
        assert torch.allclose(model.classify(feats), model.head(feats["audio"] + feats["video"]), atol=1e-6)
    assert isinstance(model.head, nn.Linear) and model.fusion.output_dim == D


def test_mm_on_the_logit_sum_mixes_features_and_logits_alike():
    """The fused feature of form=logits is [z_a; z_v]; mixing it (Eq. 3) = mixing each z_m with the same
    lambda and pi = mixing the reference's logits, since the head is linear."""
    model = make_model(make_cfg(AV, fusion="sum"))
    inputs, _ = make_batch(AV, 6)
    perm, w = torch.tensor([3, 0, 5, 1, 2, 4]), 0.3
    with torch.no_grad():
        plain = model(inputs)
        mixed = model(inputs, mix=Mix("fused", perm, {"*": w}, w))
        ref = reference_from(model)
        za, zv = ((1 - w) * plain.features[m] + w * plain.features[m][perm] for m in AV)
    assert mixed.fused.shape == (6, 2 * D)
    assert torch.allclose(mixed.logits, ref(za, zv)[2], atol=1e-5)
    assert torch.allclose(mixed.logits, (1 - w) * plain.logits + w * plain.logits[perm], atol=1e-5)


@pytest.mark.parametrize("recipe", ["cremad", "cremad-mm", "cremad-bmm"])
def test_table1_recipes_build_the_reference_sum(recipe):
    cfg = resolve_config(recipe, {"model.fusion": "sum", "model.encoder": "small", "model.width": WIDTH})
    model = build_model(cfg, CLASSES)
    assert model.fusion.form == "logits" and set(model.head.heads) == set(AV)


def test_bad_form_and_old_checkpoints_are_one_clear_error():
    with pytest.raises(MmvidError, match="fusion_args.form"):
        FUSIONS.build("sum", {m: D for m in AV}, form="features")
    cfg = make_cfg(AV, fusion="sum")
    cfg.model.fusion_args = {"form": "feature"}
    old = make_model(cfg).state_dict()
    with pytest.raises(MmvidError, match="form=feature"):
        make_model(make_cfg(AV, fusion="sum")).load_state_dict(old)
