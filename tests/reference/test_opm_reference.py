"""OPM against its reference, GeWu-Lab/BML_TPAMI2024 (HEAD 8db168f) ``code/models/Classifier.py``
(``calcu_q``, ``Modality_drop.execute_drop``, ``Classifier.forward``) and ``code/main.py`` (``train`` with
``--use_adam_drop``), re-implemented below from reading them: split-head scores t_a = W[:, :d] a + b/2,
t_v = W[:, d:] v + b/2; q = clip(q_base (1 + lam tanh(relu(ratio - 1)))) on the dominant side, 0 on the other;
with probability p_exe a Bernoulli(1 - q) keep mask of shape (M, B, 1) drawn as
``Bernoulli(1 - q).sample([B, 1]).permute(2, 1, 0).reshape(M, B, -1)``; every feature times its mask over
(1 - theta), theta = sum d q / sum d; samples with nothing kept leave the batch; the loss is the CE of the
concat head on the kept samples. Active when ``warm_up == 0``, i.e. epoch > 5.

The reference's own mask (drawn with its own call under a fixed seed) is handed to mmvid, so the drop, the
loss and every gradient are compared on identical random draws; mmvid's own sampler is checked in
distribution (fixed seed, stated tolerance).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _methods_util import attach, make_batch, make_cfg, make_model

from mmvid.balance.opm import opm_drop_probabilities
from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]


# ----------------------------------------------------------------------------- the reference, re-implemented


def ref_performances(model, feats, label):
    """performance_1, performance_2 of Classifier.forward: summed softmax true-class probabilities of the
    head's slices with half the bias each."""
    w, b = model.head.weight.detach(), model.head.bias.detach()
    d = feats["audio"].shape[1]
    t1 = torch.mm(feats["audio"], w[:, :d].t()) + b / 2
    t2 = torch.mm(feats["video"], w[:, d:].t()) + b / 2
    return tuple(sum(float(t.softmax(1)[i][int(label[i])]) for i in range(len(label))) for t in (t1, t2))


def ref_calcu_q(p1: float, p2: float, q_base: float, lam: float) -> list[float]:
    r1 = math.tanh(max(p1 / p2 - 1, 0.0))
    r2 = math.tanh(max(p2 / p1 - 1, 0.0))
    q = [q_base * (1 + lam * r1) if r1 > 0 else 0.0, q_base * (1 + lam * r2) if r2 > 0 else 0.0]
    return [min(max(v, 0.0), 1.0) for v in q]


def ref_mask(q: list[float], batch: int, seed: int) -> torch.Tensor:
    """The reference's mask draw, (M, B, 1), under a fixed global seed."""
    torch.manual_seed(seed)
    qt = torch.tensor(q)
    return torch.distributions.Bernoulli(1 - qt).sample([batch, 1]).permute(2, 1, 0).contiguous().reshape(len(q), batch, -1)


def ref_drop_loss(model, feats, label, q, mask):
    """execute_drop (after deciding to drop) -> fusion_model -> CE on the kept samples (main.py)."""
    dims = torch.tensor([feats["audio"].shape[1], feats["video"].shape[1]], dtype=torch.float32)
    theta = float(sum(dims * torch.tensor(q))) / float(dims.sum())
    stacked = torch.stack([feats["audio"], feats["video"]], 0) * mask / (1 - theta)  # [2, B, D]
    update_flag = mask.transpose(0, 1).squeeze(-1).sum(1) > 0
    cleaned = stacked[:, update_flag]
    out = model.head(torch.cat([cleaned[0], cleaned[1]], 1))
    return F.cross_entropy(out, label[update_flag]), update_flag


# ----------------------------------------------------------------------------- set-up


def make(p_exe=1.0, fusion="concat", augment="none", **args):
    cfg = make_cfg(AV, fusion=fusion, augment=augment, balance="opm", balance_args={"p_exe": p_exe, **args})
    model = make_model(cfg)
    inputs, y = make_batch(AV, 8, seed=3)
    bal = BALANCERS.build("opm", cfg.balance, AV)
    bal.check(cfg.model, augment)
    aug = AUGMENTS.build(augment, cfg.augment, AV)
    ctx = attach(cfg, model, aug, bal, [(inputs, y)])
    ctx.epoch = 6
    model.train()
    return model, bal, aug, ctx, inputs, y


def grads_of(model):
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("s_a, s_v", [(3.0, 1.5), (1.5, 3.0), (5.2, 5.1), (0.4, 6.0), (7.9, 0.1), (2.0, 2.0)])
@pytest.mark.parametrize("q_base, lam", [(0.5, 0.5), (0.4, 0.5), (0.9, 1.0)])
def test_drop_probability_matches_calcu_q(s_a, s_v, q_base, lam):
    got = opm_drop_probabilities({"audio": s_a, "video": s_v}, q_base, lam)
    ref = ref_calcu_q(s_a, s_v, q_base, lam)
    assert [got["audio"], got["video"]] == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drop_loss_and_gradients_equal_the_reference_on_its_own_mask(seed, monkeypatch):
    """Same weights, batch and mask: q to 1e-6, loss to 1e-6, every gradient to rtol 1e-5 / atol 1e-7."""
    model, bal, aug, ctx, inputs, y = make()
    out, loss = aug.compute(model, inputs, y, ctx)
    feats = {m: z.detach() for m, z in out.features.items()}
    q_ref = ref_calcu_q(*ref_performances(model, feats, y), 0.5, 0.5)
    assert max(q_ref) > 0.4 and min(q_ref) == 0.0, "the batch must have a dominant modality"
    mask = ref_mask(q_ref, len(y), seed)
    seen = {}

    def draw(q, batch):
        seen.update(q)
        return mask.squeeze(-1)

    monkeypatch.setattr(bal, "draw", draw)
    mine = bal.loss(loss, out, inputs, y, ctx)
    assert [seen["audio"], seen["video"]] == pytest.approx(q_ref, abs=1e-6)
    model.zero_grad()
    mine.backward()
    g_mine = grads_of(model)

    model.zero_grad()
    out2 = model(inputs)
    ref_loss, flag = ref_drop_loss(model, out2.features, y, q_ref, mask)
    ref_loss.backward()
    g_ref = grads_of(model)
    assert flag.all(), "two modalities: the weak one is never dropped, so no sample leaves the batch"
    assert float(mine.detach()) == pytest.approx(float(ref_loss.detach()), abs=1e-6)
    for n in g_ref:
        if g_ref[n] is None:
            assert g_mine[n] is None or not g_mine[n].any(), n
        else:
            assert torch.allclose(g_mine[n], g_ref[n], rtol=1e-5, atol=1e-7), n
    assert bal.log()["opm_dropped_" + ("audio" if q_ref[0] else "video")] == pytest.approx(1 - float(mask[q_ref.index(max(q_ref))].mean()))


def test_samples_with_everything_dropped_leave_the_loss(monkeypatch):
    """A hand-made mask that drops both modalities of samples 0 and 3: those samples leave the batch, as the
    reference's update_flag removes them (BalanceBenchmark's three-modality case)."""
    model, bal, aug, ctx, inputs, y = make()
    out, loss = aug.compute(model, inputs, y, ctx)
    feats = {m: z.detach() for m, z in out.features.items()}
    q_ref = ref_calcu_q(*ref_performances(model, feats, y), 0.5, 0.5)
    mask = torch.ones(2, len(y), 1)
    mask[:, [0, 3]] = 0
    mask[0, 5] = 0
    monkeypatch.setattr(bal, "draw", lambda q, batch: mask.squeeze(-1))
    mine = bal.loss(loss, out, inputs, y, ctx)
    ref_loss, flag = ref_drop_loss(model, model(inputs).features, y, q_ref, mask)
    assert int(flag.sum()) == len(y) - 2
    assert float(mine.detach()) == pytest.approx(float(ref_loss.detach()), abs=1e-6)


def test_no_drop_leaves_the_loss_alone_and_the_window_is_the_references_warm_up():
    """p_exe = 0 never drops; before epoch 6 (the reference's warm_up for epoch <= 5) nothing is dropped
    either, and the loss is the augmentation's own tensor."""
    model, bal, aug, ctx, inputs, y = make(p_exe=0.0)
    out, loss = aug.compute(model, inputs, y, ctx)
    assert bal.loss(loss, out, inputs, y, ctx) is loss
    for epoch, drops in ((0, False), (5, False), (6, True), (200, True)):
        model, bal, aug, ctx, inputs, y = make()
        ctx.epoch = epoch
        out, loss = aug.compute(model, inputs, y, ctx)
        assert (bal.loss(loss, out, inputs, y, ctx) is not loss) == drops, epoch
    model, bal, aug, ctx, inputs, y = make(start=0, end=80)  # BalanceBenchmark's window
    ctx.epoch = 81
    out, loss = aug.compute(model, inputs, y, ctx)
    assert bal.loss(loss, out, inputs, y, ctx) is loss


def test_sampler_frequencies_are_p_exe_and_one_minus_q():
    """mmvid draws from its own seeded generator: over 4000 steps of 8 samples the drop decision has
    frequency p_exe = 0.7 and the dropped share q (0.6 / 0) within 3 % absolute (> 6 sigma)."""
    model, bal, aug, ctx, inputs, y = make(p_exe=0.7)
    q = {"audio": 0.6, "video": 0.0}
    draws = [bal.draw(q, 8) for _ in range(4000)]
    done = [d for d in draws if d is not None]
    assert len(done) / len(draws) == pytest.approx(0.7, abs=0.03)
    keep = torch.stack(done)
    assert float(1 - keep[:, 0].mean()) == pytest.approx(0.6, abs=0.03) and bool(keep[:, 1].all())


def test_mask_score_and_mixing_compose(monkeypatch):
    """score=mask (paper Eq. 5) and a fused-stage mix (MM): the recomputed prediction is mixed with the same
    (lambda, pi) and the loss is the augmentation's with its fused CE replaced."""
    from mmvid.augment.base import mixed_cross_entropy

    model, bal, aug, ctx, inputs, y = make(score="mask", augment="mm")
    keep = torch.ones(2, len(y))
    keep[1, :4] = 0
    monkeypatch.setattr(bal, "draw", lambda q, batch: keep)
    out, loss = aug.compute(model, inputs, y, ctx)
    mine = bal.loss(loss, out, inputs, y, ctx)
    q = bal.stats.sums
    theta = 32 * (q["opm_q_audio"] + q["opm_q_video"]) / 64
    feats = {m: out.features[m] * keep[i][:, None] / (1 - theta) for i, m in enumerate(AV)}
    fused = out.mix.apply({"fused": model.fusion(feats)})["fused"]
    expected = mixed_cross_entropy(model.head(fused), y, out.mix)
    assert float(mine.detach()) == pytest.approx(float(expected.detach()), abs=1e-6) and float(mine.detach()) != pytest.approx(float(loss.detach()), abs=1e-4)


def test_bad_options_are_one_clear_error():
    for args, key in (({"q_base": 1.5}, "q_base"), ({"p_exe": -0.1}, "p_exe"), ({"lam": -1}, "lam"),
                      ({"score": "heads"}, "score")):
        with pytest.raises(MmvidError, match=f"balance.args.{key}"):
            BALANCERS.build("opm", make_cfg(AV, balance="opm", balance_args=args).balance, AV)
    cfg = make_cfg(AV, fusion="film", balance="opm")
    with pytest.raises(MmvidError, match="score=mask"):
        BALANCERS.build("opm", cfg.balance, AV).check(cfg.model, "none")


def test_opm_trains_on_the_demo_and_drops(tiny_ws, tmp_path):
    import json

    from mmvid.config import resolve_config
    from mmvid.engine.loop import train

    cache = tiny_ws / "caches" / "demo.h5"  # the session's 60-clip demo cache (tests/conftest.py), read only
    cfg = resolve_config("demo", {"epochs": 2, "model.width": 4, "data.batch_size": 16, "data.val_fraction": 0.25,
                                  "balance.name": "opm", "balance.args": {"start": 0, "p_exe": 1.0}})
    train(cfg, cache, tmp_path / "run", progress=False)
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [0, 1]
    assert all(max(ln["opm_dropped_audio"], ln["opm_dropped_video"]) > 0 for ln in lines), lines
