"""G-Blend against its usual public implementation, GeWu-Lab/BalanceBenchmark
``balancemm/trainer/GBlending_trainer.py`` (``super_epoch_origin``, ``training_step``) with the per-modality
outputs ``Uni_res`` of ``balancemm/models/avclassify_model.py`` (``Unimodality_Calculate``), re-implemented
below from reading them:

- weights: per key k (each modality and ``output``), from the summed batch losses (train: the sum of the
  batch-mean CE over an epoch's training batches; validation: the sum of batch-mean CE over the validation
  batches, in eval mode) at two measuring points, G = L_val(now) - L_val(pre),
  O = (L_val - L_train)(now) - (L_val - L_train)(pre), w_k = |G| / O^2, divided by their sum;
- loss: sum_k w_k CE(Uni_res[k], y), Uni_res[m] = z_m W[:, cols of m]^T + b / M for concat, Uni_res[output]
  = the fused logits.

What the reference measures the losses on (probe copies of the model trained for a super-epoch per key)
is not reproduced by mmvid (docs/methods.md, G-Blend); the tests feed both the same losses and states.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _methods_util import attach, make_batch, make_cfg, make_model

from mmvid.balance.gblend import gblend_weights
from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]


# ----------------------------------------------------------------------------- the reference, re-implemented


def ref_weights(pre: dict[str, tuple[float, float]], now: dict[str, tuple[float, float]]) -> dict[str, float]:
    """super_epoch_origin's formula; pre/now: key -> (train loss, validation loss)."""
    raw = {}
    for k in pre:
        (pre_t, pre_v), (now_t, now_v) = pre[k], now[k]
        g = now_v - pre_v
        o = (now_v - now_t) - (pre_v - pre_t)
        raw[k] = abs(g) / (o ** 2)
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


def ref_uni_res(model, feats: dict[str, torch.Tensor], fused: torch.Tensor) -> dict[str, torch.Tensor]:
    """Unimodality_Calculate for concat: modality m's columns of fc_out, plus fc_out.bias / M."""
    w, b = model.head.weight, model.head.bias
    res, start = {}, 0
    for m in AV:
        d = feats[m].shape[1]
        res[m] = torch.mm(feats[m], torch.transpose(w[:, start:start + d], 0, 1)) + b / len(AV)
        start += d
    res["output"] = fused
    return res


def ref_loss(uni_res: dict[str, torch.Tensor], y, weights: dict[str, float]) -> torch.Tensor:
    return sum(weights[k] * F.cross_entropy(uni_res[k], y) for k in uni_res)


REF_KEY = {"fused": "output", "audio": "audio", "video": "video"}


# ----------------------------------------------------------------------------- set-up


def setup(batches, **args):
    cfg = make_cfg(AV, balance="gblend", balance_args={"heads": "split", "losses": "batch_sum", **args})
    model = make_model(cfg)
    bal = BALANCERS.build("gblend", cfg.balance, AV)
    bal.check(cfg.model, "none")
    ctx = attach(cfg, model, AUGMENTS.build("none", cfg.augment, AV), bal, batches)
    return model, bal, ctx


# ----------------------------------------------------------------------------- tests


def test_weight_formula_equals_the_reference_on_random_losses():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        losses = torch.rand(2, 3, 2, generator=g, dtype=torch.float64) * 3
        pre = {k: tuple(map(float, losses[0, i])) for i, k in enumerate(["fused", "audio", "video"])}
        now = {k: tuple(map(float, losses[1, i])) for i, k in enumerate(["fused", "audio", "video"])}
        expected = ref_weights(pre, now)
        assert gblend_weights(pre, now) == {k: pytest.approx(v, rel=1e-12) for k, v in expected.items()}


def test_split_head_logits_and_weighted_loss_equal_the_reference():
    inputs, y = make_batch(AV, 8, seed=1)
    model, bal, ctx = setup([(inputs, y)])
    bal.weights = {"fused": 0.5, "audio": 0.2, "video": 0.3}
    model.train()
    out = model(inputs)
    uni = ref_uni_res(model, out.features, out.logits)
    mine = bal.head_logits(out)
    for m in AV:
        assert torch.allclose(mine[m], uni[m], atol=1e-6), m
    loss = bal.loss(F.cross_entropy(out.logits, y), out, inputs, y, ctx)
    ref = ref_loss(uni, y, {REF_KEY[k]: w for k, w in bal.weights.items()})
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert bal.heads is None and not any("gblend" in n for n, _ in model.named_parameters()), "split: no extra heads"


def test_batch_sum_losses_and_weights_over_a_super_epoch_equal_the_reference():
    """Three epochs of three training batches (Adam steps), validation on two batches after each epoch,
    super_epoch 2: the weights after epoch 2 equal the reference's formula on the reference's summed
    batch losses at the end of epochs 0 and 2, re-computed here from the same states."""
    train = [make_batch(AV, 6, seed=s) for s in (10, 11, 12)]
    val = [make_batch(AV, 5, seed=s) for s in (20, 21)]
    model, bal, ctx = setup(val, super_epoch=2)
    points = {}
    for epoch in range(3):
        ctx.epoch = epoch
        sums = dict.fromkeys(["output", *AV], 0.0)
        for inputs, y in train:
            model.train()
            out = model(inputs)
            with torch.no_grad():
                for k, logits in ref_uni_res(model, out.features, out.logits).items():
                    sums[k] += float(F.cross_entropy(logits, y))
            loss = bal.loss(F.cross_entropy(out.logits, y), out, inputs, y, ctx)
            ctx.optimizer.zero_grad()
            loss.backward()
            ctx.optimizer.step()
        model.eval()
        vsums = dict.fromkeys(["output", *AV], 0.0)
        with torch.no_grad():
            for inputs, y in val:
                out = model(inputs)
                for k, logits in ref_uni_res(model, out.features, out.logits).items():
                    vsums[k] += float(F.cross_entropy(logits, y))
        points[epoch] = {k: (sums[k], vsums[k]) for k in sums}
        before = dict(bal.weights)
        bal.on_epoch_end(ctx)
        if epoch < 2:
            assert bal.weights == before, "weights change only after a whole super-epoch"
    expected = ref_weights(points[0], points[2])
    assert {REF_KEY[k]: w for k, w in bal.weights.items()} == {k: pytest.approx(v, rel=1e-5) for k, v in expected.items()}
    mean_weights = gblend_weights({k: (t / 3, v / 2) for k, (t, v) in points[0].items()},
                                  {k: (t / 3, v / 2) for k, (t, v) in points[2].items()})
    assert max(abs(mean_weights[k] - expected[k]) for k in expected) > 1e-3, "batch_sum must matter on this run"


def test_bad_options_are_one_clear_error():
    with pytest.raises(MmvidError, match="balance.args.heads"):
        BALANCERS.build("gblend", make_cfg(AV, balance="gblend", balance_args={"heads": "fc"}).balance, AV)
    with pytest.raises(MmvidError, match="balance.args.losses"):
        BALANCERS.build("gblend", make_cfg(AV, balance="gblend", balance_args={"losses": "sum"}).balance, AV)
    cfg = make_cfg(AV, fusion="film", balance="gblend", balance_args={"heads": "split"})
    with pytest.raises(MmvidError, match="heads=split"):
        BALANCERS.build("gblend", cfg.balance, AV).check(cfg.model, "none")
