"""LFM against its reference implementations, re-implemented below from reading them:

- the authors' njustkmg/NeurIPS24-LFM ``Crema_epoch_learnable.py`` (HEAD ad44fa0): ``Alignment`` (softmax, then
  ``F.kl_div(p.log(), m, 'batchmean')`` both ways, halved), ``getAlpha_Learnable`` (half of a 16-clip held-out
  batch; L_total = a0 CE(0.5 o_v + 0.5 o_a) + a1 Align(o_a, o_v); the Hessian-vector product of L_total's
  gradient with CE's gradient over ``model.parameters()``, mean of its first tensor; lr halved at epochs
  divisible by 20; a1 clipped to [0.05, 0.95], a0 = 1 - a1; start ``cls_k = [0.05, 0.95]``) and
  ``train_audio_video`` (loss 2 (a0 CE + a1 Align)) on its AVClassifier (one linear head per modality), which
  is mmvid's ``--fusion decision``; ``Crema_epoch.py``'s ``getAlpha_Learnable_Fitted``;
- GeWu-Lab/BalanceBenchmark ``balancemm/trainer/LFM_trainer.py`` (HEAD 4c1482f): the same with a quarter of
  the first validation batch, the model in train mode, ``alpha = {0: 0.95, 1: 0.05}``, the fused output of the
  concat head and its split slices ``unimodal_result`` (Uni_res), and the alignment summed over the modality
  pairs and divided by their number.

Each test runs mmvid's balancer and the re-implementation on copies of one model and the same batches, and
compares the learnt weight, the hypergradient, the losses and the parameters after the steps.
"""

from __future__ import annotations

import copy
from itertools import combinations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _methods_util import attach, make_batch, make_cfg, make_model, train_step

from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]
AVF = ["audio", "video", "flow"]


# ----------------------------------------------------------------------------- the reference, re-implemented


def ref_alignment(p, q):
    p, q = F.softmax(p, dim=-1), F.softmax(q, dim=-1)
    m = 0.5 * p + 0.5 * q
    return 0.5 * (F.kl_div(p.log(), m, reduction="batchmean") + F.kl_div(q.log(), m, reduction="batchmean"))


def authors_outputs(model, inputs):
    """AVClassifier.forward: (o_a, o_v) from the per-modality heads cls_a, cls_v."""
    feats = model.encode(inputs)
    return model.head.heads["audio"](feats["audio"]), model.head.heads["video"](feats["video"])


def authors_losses(model, inputs, y):
    o_a, o_v = authors_outputs(model, inputs)
    cls = nn.CrossEntropyLoss(reduction="none")(0.5 * o_v + 0.5 * o_a, y).mean()
    return cls, ref_alignment(o_a, o_v)


def benchmark_losses(model, inputs, y, mods):
    """BalanceBenchmark: CE of the fused output, alignment summed over pairs (divided later by their number)."""
    out = model(inputs)
    w, b, n = model.head.weight, model.head.bias, len(mods)
    uni, start = {}, 0
    for m in mods:
        d = out.features[m].shape[1]
        uni[m] = torch.mm(out.features[m], w[:, start:start + d].t()) + b / n
        start += d
    align = sum(ref_alignment(uni[mods[i]], uni[mods[j]]) for i, j in combinations(range(n), 2))
    return nn.CrossEntropyLoss()(out.logits, y), align, len(list(combinations(range(n), 2)))


def ref_get_alpha(epoch, model, losses, alpha, lr_alpha):
    """getAlpha_Learnable after the forward: ``losses`` = (loss_cls, alignment term already divided)."""
    loss_cls, loss_alignment = losses
    l_total = alpha[0] * loss_cls + alpha[1] * loss_alignment
    theta_grads = torch.autograd.grad(l_total, model.parameters(), create_graph=True)
    cls_grads = torch.autograd.grad(loss_cls, model.parameters(), retain_graph=True, create_graph=True)
    hvp = torch.autograd.grad(outputs=theta_grads, inputs=model.parameters(), grad_outputs=cls_grads, retain_graph=True)
    with torch.no_grad():
        alpha_grad = hvp[0].mean().item()
        if epoch % 20 == 0 and epoch != 0:
            lr_alpha = lr_alpha / 2
        alpha[1] -= lr_alpha * alpha_grad
        alpha[1] = max(0.05, min(0.95, alpha[1]))
        alpha[0] = 1.0 - alpha[1]
    return alpha, lr_alpha, alpha_grad


def ref_fitted(epoch):
    c1 = [2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08, -5.39717505e-11]
    c2 = [7.95376296e-01, -3.35472727e-03, -1.22989557e-04, 2.92947416e-06, -2.23835486e-08, 5.39717505e-11]
    return [sum(c * (epoch ** i) for i, c in enumerate(c1)), sum(c * (epoch ** i) for i, c in enumerate(c2))]


# ----------------------------------------------------------------------------- set-up


def setup(mods, fusion, held_out, **args):
    cfg = make_cfg(mods, fusion=fusion, balance="lfm", balance_args=args)
    model = make_model(cfg)
    bal = BALANCERS.build("lfm", cfg.balance, mods)
    bal.check(cfg.model, "none")
    ctx = attach(cfg, model, AUGMENTS.build("none", cfg.augment, mods), bal, [held_out])
    return cfg, model, bal, ctx


def assert_same_parameters(a, b, atol):
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        if p.is_floating_point():
            assert torch.allclose(p, q, atol=atol), name


# ----------------------------------------------------------------------------- tests


def test_alignment_equals_the_reference_and_is_not_jensen_shannon():
    from mmvid.balance.lfm import alignment, pair_alignment

    g = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 5.0):
        p, q, r = (torch.randn(6, 5, generator=g) * scale for _ in range(3))
        assert float(alignment(p, q)) == pytest.approx(float(ref_alignment(p, q)), rel=1e-5, abs=1e-7)
        expected = (ref_alignment(p, q) + ref_alignment(p, r) + ref_alignment(q, r)) / 3
        assert float(pair_alignment({"a": p, "v": q, "f": r})) == pytest.approx(float(expected), rel=1e-5)
    pp, qq = F.softmax(p, 1), F.softmax(q, 1)
    m = (pp + qq) / 2
    js = 0.5 * ((pp * (pp / m).log()).sum(1) + (qq * (qq / m).log()).sum(1)).mean()
    assert abs(float(alignment(p, q)) - float(js)) > 1e-3, "the reference's KL runs from the mixture, not to it"


@pytest.mark.parametrize("hyper_mode", ["eval", "train"])
def test_authors_code_weight_losses_and_steps_equal_the_reference(hyper_mode):
    """Decision fusion (the authors' AVClassifier): five epochs 0, 1, 20, 21, 40 (the lr halves at 20 and 40),
    two steps of Adam in each; the weight, the hypergradient, every step's loss and the parameters equal the
    re-implementation's. The weight starts at 0.5 and lr_alpha is large (the hypergradient is about 1e-6 in
    eval mode and 1e-3 in train mode on this tiny model) so that the weight moves without reaching a bound
    (from the authors' 0.95 it stays clamped there: the hypergradient is negative here). ``eval``: the authors'
    code after its first epoch; ``train``: BatchNorm statistics move in both alike."""
    held_out = make_batch(AV, 16, seed=5)  # the authors' 16 held-out clips, of which they use half
    train = [make_batch(AV, 8, seed=s) for s in (1, 2)]
    lr_alpha = 3e3 if hyper_mode == "eval" else 20.0
    cfg, model, bal, ctx = setup(AV, "decision", held_out, lr_alpha=lr_alpha, hyper_mode=hyper_mode, align_init=0.5)
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    aug = AUGMENTS.build("none", cfg.augment, AV)
    alpha, grads = [0.5, 0.5], []
    for epoch in (0, 1, 20, 21, 40):
        ctx.epoch = epoch
        bal.on_epoch_start(ctx)
        ref.train(hyper_mode == "train")
        xs, ys = held_out
        half = {m: x[:8] for m, x in xs.items()}
        alpha, lr_alpha, g = ref_get_alpha(epoch, ref, authors_losses(ref, half, ys[:8]), alpha, lr_alpha)
        grads.append(g)
        assert bal.last_grad == pytest.approx(g, rel=1e-4, abs=1e-9), epoch
        assert bal.align == pytest.approx(alpha[1], rel=1e-5, abs=1e-9), epoch
        assert_same_parameters(model, ref, 1e-5)  # BatchNorm running statistics included
        for inputs, y in train:
            _, loss = train_step(model, aug, bal, ctx, inputs, y)
            ref.train()
            cls, align = authors_losses(ref, inputs, y)
            ref_loss = 2 * (alpha[0] * cls + alpha[1] * align)
            ref_opt.zero_grad()
            ref_loss.backward()
            ref_opt.step()
            assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-5)
        assert_same_parameters(model, ref, 1e-5)
        assert "lfm_alpha_align" in bal.log() and "lfm_align_loss" in bal.log()
    assert 0.505 < bal.align < 0.95, "the weight must have moved, and stayed inside its bounds"


def test_benchmark_trainer_three_modalities_equal_the_reference():
    """BalanceBenchmark's form: concat head slices, fused CE, pairs averaged (three modalities: three pairs),
    train-mode hyper step on a quarter of a 32-clip validation batch, start a_align = 0.05."""
    held_out = make_batch(AVF, 32, seed=7)
    train = [make_batch(AVF, 8, seed=s) for s in (3, 4)]
    lr_alpha = 2.0
    cfg, model, bal, ctx = setup(AVF, "concat", held_out, lr_alpha=lr_alpha, hyper_mode="train", align_init=0.05)
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    aug = AUGMENTS.build("none", cfg.augment, AVF)
    alpha = {1: 0.05, 0: 0.95}
    for epoch in (0, 1, 2):
        ctx.epoch = epoch
        bal.on_epoch_start(ctx)
        ref.train()
        xs, ys = held_out
        quarter = {m: x[:32 // 4] for m, x in xs.items()}
        cls, align, n_pairs = benchmark_losses(ref, quarter, ys[:8], AVF)
        alpha, lr_alpha, g = ref_get_alpha(epoch, ref, (cls, align / n_pairs), alpha, lr_alpha)
        assert bal.last_grad == pytest.approx(g, rel=1e-4, abs=1e-9), epoch
        assert bal.align == pytest.approx(alpha[1], rel=1e-5, abs=1e-9), epoch
        for inputs, y in train:
            _, loss = train_step(model, aug, bal, ctx, inputs, y)
            ref.train()
            cls, align, n_pairs = benchmark_losses(ref, inputs, y, AVF)
            ref_loss = 2 * (alpha[0] * cls + alpha[1] * align / n_pairs)
            ref_opt.zero_grad()
            ref_loss.backward()
            ref_opt.step()
            assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-5)
        assert_same_parameters(model, ref, 1e-5)


def test_fitted_schedule_equals_crema_epoch():
    held_out = make_batch(AV, 8, seed=5)
    cfg, model, bal, ctx = setup(AV, "decision", held_out, schedule="fitted")
    inputs, y = make_batch(AV, 8, seed=1)
    for epoch in (0, 7, 50, 120, 199):
        ctx.epoch = epoch
        bal.on_epoch_start(ctx)
        cls_k = ref_fitted(epoch)
        assert bal.align == pytest.approx(cls_k[1], abs=1e-12)
        model.train()
        with torch.no_grad():
            out = model(inputs)
            loss = bal.loss(F.cross_entropy(out.logits, y), out, inputs, y, ctx)
            cls, align = authors_losses(model, inputs, y)
        assert float(loss) == pytest.approx(float(2 * (cls_k[0] * cls + cls_k[1] * align)), rel=1e-5)


def test_state_survives_a_resume():
    held_out = make_batch(AV, 8, seed=5)
    _, _, bal, ctx = setup(AV, "decision", held_out, lr_alpha=20.0, hyper_mode="train", align_init=0.5)
    bal.on_epoch_start(ctx)
    other = BALANCERS.build("lfm", make_cfg(AV, balance="lfm", balance_args={"align_init": 0.5}).balance, AV)
    other.load_state_dict(bal.state_dict())
    assert other.align == bal.align != 0.5 and other.last_grad == bal.last_grad


def test_mask_scores_need_no_split_head_and_bad_options_are_one_clear_error():
    cfg = make_cfg(AV, fusion="film", balance="lfm")
    with pytest.raises(MmvidError, match="balance.args.score=split-head"):
        BALANCERS.build("lfm", cfg.balance, AV).check(cfg.model, "none")
    cfg, model, bal, ctx = setup(AV, "film", make_batch(AV, 8, seed=5), score="mask")
    bal.on_epoch_start(ctx)
    _, loss = train_step(model, AUGMENTS.build("none", cfg.augment, AV), bal, ctx, *make_batch(AV, 8, seed=1))
    assert torch.isfinite(loss)
    for key, value in (("schedule", "cosine"), ("hyper_mode", "test"), ("score", "head"), ("align_init", 1.5),
                       ("lr_alpha", -1), ("halve_every", 0), ("hyper_samples", 0)):
        with pytest.raises(MmvidError, match=f"balance.args.{key}"):
            BALANCERS.build("lfm", make_cfg(AV, balance="lfm", balance_args={key: value}).balance, AV)
    cfg, model, bal, ctx = setup(AV, "decision", make_batch(AV, 8, seed=5))
    ctx.splits.val = ctx.splits.val[:0]
    with pytest.raises(MmvidError, match="validation split is empty"):
        bal.setup(model, ctx)
