"""MMCosine against its reference, GeWu-Lab/MMCosine_ICASSP23 ``main_CD.py`` (``train_epoch`` with
``--mmcosine True``; ``models/fusion_modules.py`` ``ConcatFusion``), and BalanceBenchmark
``balancemm/trainer/MMCosine_trainer.py`` (HEAD 4c1482f, its two- and three-modality slicing), re-implemented
below from reading them:

    out_a = mm(normalize(a, dim=1), normalize(fc_out.weight[:, :d].T, dim=0)) * scaling
    out_v = mm(normalize(v, dim=1), normalize(fc_out.weight[:, d:].T, dim=0)) * scaling
    out = out_a + out_v;  loss = CE(out, label)

The reference's fc_out is handed mmvid's head weight (its bias, never used by MMCosine, is left out).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _methods_util import CLASSES, make_batch, make_cfg, make_model

from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import FUSIONS

load_plugins()
AV = ["audio", "video"]
AVF = ["audio", "video", "flow"]


def ref_outputs(weight: torch.Tensor, feats: list[torch.Tensor], scaling: float) -> list[torch.Tensor]:
    """Per-modality cosine logits with BalanceBenchmark's column slicing of fc_out.weight (the original's
    [:, :512] / [:, 512:] for two modalities)."""
    outs, start = [], 0
    for z in feats:
        w = weight[:, start:start + z.size(1)]
        outs.append(torch.mm(F.normalize(z, dim=1), F.normalize(torch.transpose(w, 0, 1), dim=0)) * scaling)
        start += z.size(1)
    return outs


@pytest.mark.parametrize("mods", [AV, AVF], ids=["2mod", "3mod"])
@pytest.mark.parametrize("scale", [10.0, 15.0])
def test_logits_loss_and_gradients_equal_the_reference(mods, scale):
    """Through the whole classifier: logits and loss to 1e-5, every gradient (encoders and head) to rtol 1e-4 + atol 1e-6 (gradients are O(1))."""
    cfg = make_cfg(mods, fusion="mmcosine")
    cfg.model.fusion_args = {"scale": scale}
    model = make_model(cfg)
    model.train()
    inputs, y = make_batch(mods, 8, seed=2)
    out = model(inputs)
    loss = F.cross_entropy(out.logits, y)
    loss.backward()
    mine = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    feats = model.encode(inputs)  # the same encoders (train mode, same batch statistics)
    ref = ref_outputs(model.head.weight, [feats[m] for m in mods], scale)
    ref_logits = sum(ref)
    ref_loss = F.cross_entropy(ref_logits, y)
    ref_loss.backward()
    assert torch.allclose(out.logits, ref_logits, atol=1e-5)
    assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), abs=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(mine[n], p.grad, rtol=1e-4, atol=1e-6), n  # float32 rounding: <= 5e-7 seen
    assert mine["head.weight"].abs().sum() > 0


def test_unimodal_logits_are_the_references_out_a_out_v():
    """Eq. 5 masking zeroes the other feature, whose normalised vector is 0: each unimodal prediction is the
    reference's own out_a / out_v (to 1e-6), the same as the head's per-modality logits."""
    cfg = make_cfg(AV, fusion="mmcosine")
    model = make_model(cfg).eval()
    inputs, _ = make_batch(AV, 6, seed=4)
    with torch.no_grad():
        out = model(inputs)
        uni = model.unimodal_logits(out.features)
        per = model.head.modality_logits(out.fused)
        ref = ref_outputs(model.head.weight, [out.features[m] for m in AV], 10.0)
    for m, r in zip(AV, ref):
        assert torch.allclose(uni[m], r, atol=1e-6) and torch.allclose(per[m], r, atol=1e-6), m
    assert (out.logits.abs() <= 10.0 * len(AV) + 1e-5).all(), "cosine logits are bounded by s per modality"


def test_logits_ignore_feature_and_weight_norms():
    """The point of the method: scaling one modality's feature, or one class's weights, changes nothing."""
    fusion = FUSIONS.build("mmcosine", {"audio": 16, "video": 24})
    head = fusion.make_head(CLASSES)
    feats = {"audio": torch.randn(5, 16), "video": torch.randn(5, 24)}
    before = head(fusion(feats))
    with torch.no_grad():
        head.weight[2, :16] *= 7.0
    after = head(fusion({"audio": feats["audio"] * 30.0, "video": feats["video"]}))
    assert torch.allclose(before, after, atol=1e-5)


def test_bad_scale_is_one_clear_error():
    for bad in (0, -1, float("inf")):
        with pytest.raises(MmvidError, match="fusion_args.scale"):
            FUSIONS.build("mmcosine", {"audio": 8, "video": 8}, scale=bad)


def test_mmcosine_trains_on_the_demo_and_evaluates_from_its_checkpoint(tiny_ws, tmp_path):
    import json

    from mmvid.config import resolve_config
    from mmvid.engine.checkpoints import model_from_checkpoint
    from mmvid.engine.loop import train
    from mmvid.models.fusions import CosineHead

    cache = tiny_ws / "caches" / "demo.h5"  # the session's 60-clip demo cache (tests/conftest.py), read only
    cfg = resolve_config("demo", {"epochs": 2, "model.width": 4, "data.batch_size": 16, "data.val_fraction": 0.25,
                                  "model.fusion": "mmcosine", "model.fusion_args": {"scale": 15}})
    summary = train(cfg, cache, tmp_path / "run", progress=False)
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [0, 1] and summary["last"]["test_acc"] is not None
    model, saved, _ = model_from_checkpoint(tmp_path / "run", "last")
    assert isinstance(model.head, CosineHead) and model.head.scale == 15.0
