"""AMCo against BalanceBenchmark (the authors of the paper released no code), re-implemented below from reading it:

- ``target: logits`` (default) = HEAD c1ce5a8: ``balancemm/trainer/AMCo_trainer.py`` (``train_loop``: per epoch
  dependence off and l_t = 0; per batch p_t = sin(pi/2 min(eps, l_t) / eps), a shuffled mask of C - int(p_t C)
  ones and int(p_t C) zeros, l_t += epoch / 10; ``training_step``: CE of the fused output, then CE of every
  unimodal output, each backward, then dependence_m = (share of the concatenated softmax mass of modality m > sigma))
  with ``BaseClassifierAMCoModel`` of ``balancemm/models/avclassify_model.py`` (u_m = z_m W[:, cols_m]^T + b / M,
  u_m masked when m is dependent, output = linear_star(sum_m u_m));
- ``target: features`` = the first version, ``AMCoTrainer`` at 2603a98 (two modalities) with ``AVClassifierModel``
  at 61ec6e4: the dependent modality's features masked (U units) and scaled by 1 / (1 - p_t) (10 once |p_t - 1| <= 0.1),
  ``if s_a >= sigma: audio elif s_v >= sigma: visual``, flags kept until the epoch ends.

Both loops below run the reference's computation on a copy of the same model, batches and masks (the masks are the
ones mmvid drew: the reference shuffles with numpy), and the parameters must agree after every SGD step.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from _methods_util import CLASSES, attach, make_batch, make_cfg, make_model, train_step

import mmvid.balance.amco as amco
from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]
SIGMA, EPS = 0.5, 0.3


# ----------------------------------------------------------------------------- the reference, re-implemented


def ref_p(l_t: float) -> float:
    return math.sin(math.pi / 2 * (min(EPS, l_t) / EPS))


def ref_split(model, feats):
    """Unimodality_Calculate for concat: modality m's columns of fc_out, plus fc_out.bias / M."""
    w, b = model.head.weight, model.head.bias
    res, start = {}, 0
    for m in AV:
        d = feats[m].shape[1]
        res[m] = torch.mm(feats[m], w[:, start:start + d].t()) + b / len(AV)
        start += d
    return res


def ref_shares(uni):
    sft = torch.softmax(torch.cat([uni[m] for m in AV], 1), dim=1)
    return {m: float(torch.sum(sft[:, i * CLASSES:(i + 1) * CLASSES]) / len(sft)) for i, m in enumerate(AV)}


def ref_step_head(model, opt, inputs, y, dep, mask, star: bool):
    """HEAD's training_step on one batch (inside the modulation window); returns the new dependence."""
    feats = model(inputs).features
    uni = ref_split(model, feats)
    for m in AV:
        if dep[m]:
            uni[m] = torch.mul(uni[m], mask)
    out = uni["audio"] + uni["video"]
    if star:
        out = model.head.star(out)
    opt.zero_grad()
    F.cross_entropy(out, y).backward(retain_graph=True)
    for m in AV:
        F.cross_entropy(uni[m], y).backward(retain_graph=True)
    opt.step()
    return {m: s > SIGMA for m, s in ref_shares({m: u.detach() for m, u in uni.items()}).items()}


def ref_step_first(model, opt, inputs, y, dep, mask, p):
    """The first version's training_step (two modalities) with its model's masking of the features."""
    feats = dict(model(inputs).features)
    scale = 1 / (1 - p) if abs(p - 1) > 0.1 else 10
    if dep["audio"]:
        feats["audio"] = torch.mul(feats["audio"], mask) * scale
    elif dep["video"]:
        feats["video"] = torch.mul(feats["video"], mask) * scale
    out = model.head(torch.cat([feats["audio"], feats["video"]], 1))
    uni = ref_split(model, feats)
    opt.zero_grad()
    F.cross_entropy(out, y).backward(retain_graph=True)
    for m in AV:
        F.cross_entropy(uni[m], y).backward(retain_graph=True)
    opt.step()
    s = ref_shares({m: u.detach() for m, u in uni.items()})
    dep = dict(dep)
    if s["audio"] >= SIGMA:
        dep["audio"] = True
    elif s["video"] >= SIGMA:
        dep["video"] = True
    return dep


# ----------------------------------------------------------------------------- helpers


def setup(target="logits", star=False, **args):
    cfg = make_cfg(AV, balance="amco", balance_args={"target": target, **args})
    cfg.model.fusion_args = {"star": True} if star else {}
    model = make_model(cfg)
    bal = BALANCERS.build("amco", cfg.balance, AV)
    bal.check(cfg.model, "none")
    augment = AUGMENTS.build("none", cfg.augment, AV)
    ctx = attach(cfg, model, augment, bal, [])
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # plain SGD: a step is the gradient, exactly
    return model, bal, augment, ctx


def recorded_masks(monkeypatch):
    """Record every mask mmvid draws (the reference gets the same ones)."""
    masks = []
    draw = amco.random_mask

    def spy(n, p, gen):
        masks.append((p, draw(n, p, gen)))
        return masks[-1][1]

    monkeypatch.setattr(amco, "random_mask", spy)
    return masks


def assert_same_params(a, b, where):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=1e-5), f"{name} differs {where}"


# ----------------------------------------------------------------------------- tests


def test_mask_ratio_and_random_mask_follow_the_reference():
    assert [amco.mask_ratio(x, EPS) for x in (0.0, 0.1, 0.2, 0.3, 0.7)] == pytest.approx([ref_p(x) for x in (0.0, 0.1, 0.2, 0.3, 0.7)])
    gen = torch.Generator().manual_seed(0)
    hits = torch.zeros(10)
    for p in (0.0, 0.25, 0.5, 0.8660254, 1.0):
        mask = amco.random_mask(10, p, gen)
        assert mask.shape == (10,) and set(mask.tolist()) <= {0.0, 1.0}
        assert int((mask == 0).sum()) == int(p * 10), "int(p n) zeros, as np.pad(np.ones(n - N), (0, N))"
    for _ in range(2000):
        hits += 1 - amco.random_mask(10, 0.3, gen)
    assert hits.sum() == 6000 and (hits / 2000 - 0.3).abs().max() < 0.06, "every position equally likely"


@pytest.mark.parametrize("star", [False, True], ids=["no-star", "linear_star"])
def test_logit_masking_matches_the_reference_step_by_step(star, monkeypatch):
    """Four epochs of three batches: p_t ramps 0, 0.5, 0.87 then 1 within an epoch from epoch 1 on, the
    dependent modality's logits are masked, and every SGD step equals the reference's."""
    masks = recorded_masks(monkeypatch)
    model, bal, augment, ctx = setup(star=star)
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    batches = [make_batch(AV, 6, seed=s) for s in (1, 2, 3)]
    masked_steps = 0
    for epoch in range(4):
        ctx.epoch = epoch
        bal.on_epoch_start(ctx)
        dep, l_t = {m: False for m in AV}, 0.0
        for i, (inputs, y) in enumerate(batches):
            masked_steps += any(dep.values()) and ref_p(l_t) > 0
            train_step(model, augment, bal, ctx, inputs, y)
            p, mask = masks[-1]
            assert p == pytest.approx(ref_p(l_t)) and int((mask == 0).sum()) == int(ref_p(l_t) * CLASSES)
            l_t += epoch / 10
            dep = ref_step_head(ref, ref_opt, inputs, y, dep, mask, star)
            assert bal.dependent == dep, f"dependence after epoch {epoch} batch {i}"
            assert_same_params(model, ref, f"after epoch {epoch} batch {i}")
    assert masked_steps >= 4, "the run must exercise the masking"
    assert bal.log()["amco_p"] == pytest.approx(sum(ref_p(k * 0.3) for k in range(3)) / 3)


def test_feature_masking_matches_the_first_version(monkeypatch):
    masks = recorded_masks(monkeypatch)
    model, bal, augment, ctx = setup(target="features")
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    batches = [make_batch(AV, 6, seed=s) for s in (4, 5, 6, 7)]
    masked_steps = 0
    for epoch in range(3):
        ctx.epoch = epoch
        bal.on_epoch_start(ctx)
        dep, l_t = {m: False for m in AV}, 0.0
        for i, (inputs, y) in enumerate(batches):
            train_step(model, augment, bal, ctx, inputs, y)
            p, mask = masks[-1]
            assert p == pytest.approx(ref_p(l_t))
            l_t += epoch / 10
            if any(dep.values()):
                assert len(mask) == model.encoders["audio"].output_dim
                masked_steps += p > 0
            dep = ref_step_first(ref, ref_opt, inputs, y, dep, mask, p)
            assert bal.dependent == dep, f"dependence after epoch {epoch} batch {i}"
            assert_same_params(model, ref, f"after epoch {epoch} batch {i}")
    assert masked_steps >= 3, "the run must exercise the masking"


def test_outside_the_window_the_loss_is_the_plain_one():
    model, bal, augment, ctx = setup(start=2)
    inputs, y = make_batch(AV, 6, seed=8)
    out, base = augment.compute(model, inputs, y, ctx)
    ctx.epoch = 1
    assert bal.loss(base, out, inputs, y, ctx) is base
    ctx.epoch = 2
    uni = ref_split(model, out.features)
    expected = F.cross_entropy(out.logits, y) + sum(F.cross_entropy(uni[m], y) for m in AV)
    assert float(bal.loss(base, out, inputs, y, ctx).detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


@pytest.mark.parametrize("augment_name", ["mm", "bmm"])
def test_under_mixing_the_recomputed_logits_are_the_models(augment_name):
    """The masked fused logits are recomputed from the features as the head saw them: with nothing masked they
    equal the model's logits under fused-stage (MM) and feature-stage (B-MM) mixing alike."""
    cfg = make_cfg(AV, augment=augment_name, balance="amco")
    if augment_name == "bmm":
        cfg.augment.args["warmup"] = 0
    model = make_model(cfg)
    augment = AUGMENTS.build(augment_name, cfg.augment, AV)
    ctx = attach(cfg, model, augment, BALANCERS.build("amco", cfg.balance, AV), [])
    ctx.train_scores = {m: {"score": s, "correct": 1.0, "n": 6.0} for m, s in zip(AV, (3.0, 1.0))}
    augment.on_epoch_start(ctx)
    inputs, y = make_batch(AV, 6, seed=9)
    out, _ = augment.compute(model, inputs, y, ctx)
    assert out.mix is not None
    seen = amco.head_input(out)
    assert torch.allclose(sum(model.split_head_logits(seen).values()), out.logits, atol=1e-5)


def test_star_head_is_part_of_the_model_and_of_evaluation():
    cfg = make_cfg(AV)
    cfg.model.fusion_args = {"star": True}
    model = make_model(cfg)
    inputs, _ = make_batch(AV, 4)
    out = model(inputs)
    lin = torch.cat([out.features[m] for m in AV], 1) @ model.head.weight.t() + model.head.bias
    assert torch.allclose(out.logits, model.head.star(lin), atol=1e-6)
    assert "head.star.weight" in model.state_dict()
    cfg.model.fusion = "decision"
    with pytest.raises(MmvidError, match="fusion_args.star"):
        make_model(cfg)


def test_bad_options_are_one_clear_error():
    with pytest.raises(MmvidError, match="balance.args.target"):
        BALANCERS.build("amco", make_cfg(AV, balance="amco", balance_args={"target": "inputs"}).balance, AV)
    with pytest.raises(MmvidError, match="balance.args.eps"):
        BALANCERS.build("amco", make_cfg(AV, balance="amco", balance_args={"eps": 0}).balance, AV)
    cfg = make_cfg(AV, fusion="decision", balance="amco")
    with pytest.raises(MmvidError, match="target=logits"):
        BALANCERS.build("amco", cfg.balance, AV).check(cfg.model, "none")
    cfg = make_cfg(AV, fusion="film", balance="amco", balance_args={"target": "features"})
    with pytest.raises(MmvidError, match="target=features"):
        BALANCERS.build("amco", cfg.balance, AV).check(cfg.model, "none")
