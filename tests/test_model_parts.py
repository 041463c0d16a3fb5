"""A method's model part lives in the method's module and is steered through the part's own interface; a fusion's
split head is declared once (``Fusion.split_head``) and read by the model and by the balancers' checks alike."""

from __future__ import annotations

import pytest
import torch

from mmvid.balance.base import check_split_heads
from mmvid.balance.mmtm import MMTMFusion
from mmvid.config import TrainConfig
from mmvid.errors import MmvidError
from mmvid.models.classifier import MultimodalClassifier
from mmvid.plugins import load_plugins
from mmvid.registry import FUSIONS

load_plugins()
AV = ["audio", "video"]


def test_mmtm_interface_steers_every_block_and_refuses_unknown_values():
    fusion = FUSIONS.build("mmtm", {"audio": 32, "video": 32})
    assert isinstance(fusion, MMTMFusion)
    fusion.average_source = "first"
    assert fusion.average_source == "first" and all(b.average_source == "first" for b in fusion.blocks.values())
    with pytest.raises(ValueError, match="average_source"):
        fusion.average_source = "second"
    fusion.care = "video"
    assert fusion.care == "video"
    with pytest.raises(ValueError, match="care"):
        fusion.care = "flow"
    expected = [id(p) for b in fusion.blocks.values() for p in [*b.squeeze.parameters(), *b.excite["audio"].parameters()]]
    assert [id(p) for p in fusion.bypass_parameters("audio")] == expected


def test_mmtm_update_averages_is_each_blocks_own_update():
    torch.manual_seed(0)
    fusion = FUSIONS.build("mmtm", {"audio": 32, "video": 32})
    means = {p: {m: torch.rand(b.channels[m]) for m in AV} for p, b in fusion.blocks.items()}
    fusion.update_averages(means)
    for p, block in fusion.blocks.items():
        assert int(block.count) == 1
        assert torch.equal(block.running_audio, means[p]["audio"]) and torch.equal(block.running_video, means[p]["video"])


@pytest.mark.parametrize("name", FUSIONS.names())
def test_split_head_is_one_declaration_read_by_the_model_and_the_config_check(name):
    cfg = TrainConfig()
    cfg.model.fusion = name
    declared = FUSIONS.get(name).split_head
    torch.manual_seed(0)
    model = MultimodalClassifier(AV, 4, "small", 4, name)
    feats = {m: torch.randn(3, model.encoders[m].output_dim) for m in AV}
    if declared:
        check_split_heads(cfg.model)
        logits = model.split_head_logits(feats)
        assert set(logits) == set(AV) and all(v.shape == (3, 4) for v in logits.values())
    else:
        with pytest.raises(MmvidError, match="needs --fusion"):
            check_split_heads(cfg.model)
        with pytest.raises(MmvidError, match="split-head unimodal scores need fusion"):
            model.split_head_logits(feats)
