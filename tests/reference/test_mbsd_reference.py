"""MBSD against its reference, re-implemented below from reading it:

GeWu-Lab/BalanceBenchmark ``balancemm/trainer/MBSD_trainer.py`` (HEAD 4c1482f, last changed in 39ed569),
``training_step``, on ``balancemm/models/avclassify_model.py`` (``unimodality_calculate`` with the concat head:
u_m = z_m W_m^T + b / M). Inside the modulation window, per sample i (a Python loop), for a pair (a, b):
w[i] = max(p_a, p_b) - min(p_a, p_b) when either argmax equals the label, else 0; ps[i] = max, pw[i] = min
(p = softmax probability of the label; the values are written into zero tensors, so they keep their gradients);
loss_KL = mm(w, kl_div(ps, pw, 'none')) / B; loss_RS = mm(w, (1/C) sum (u_a - u_b)^2) / B (two modalities: on the
logits) or the same on the softmax outputs, averaged over the pairs (0,1), (0,2), (1,2) (three modalities);
total = CE(out) + sum_m CE(u_m) + loss_RS + loss_KL. Outside the window: CE(out) alone.

mmvid's balancer is run on the same weights and batch; the loss and every parameter's gradient are compared.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _methods_util import attach, make_batch, make_cfg, make_model, train_step

from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]
AVF = ["audio", "video", "flow"]


# ----------------------------------------------------------------------------- the reference, re-implemented


def ref_training_step(model, inputs, label, in_window: bool = True, branch: str = "reference"):
    """training_step of MBSD_trainer on the concat head; returns (total_loss, [w of each pair]). ``branch=pairs``
    runs the three-modality branch's computation on every pair (the reference has it for three only)."""
    feats = {m: model.encoders[m](inputs[m]) for m in model.modalities}
    w_head, b, n = model.head.weight, model.head.bias, len(model.modalities)
    out = F.linear(torch.cat([feats[m] for m in model.modalities], 1), w_head, b)
    uni, at = {}, 0
    for m in model.modalities:  # unimodality_calculate
        d = feats[m].shape[1]
        uni[m] = torch.mm(feats[m], torch.transpose(w_head[:, at:at + d], 0, 1)) + b / n
        at += d
    key = list(model.modalities)
    total = F.cross_entropy(out, label)
    if not in_window:
        return total, []
    prediction = {m: torch.softmax(uni[m], 1) for m in key}
    y_pred = {m: prediction[m].argmax(dim=-1) for m in key}
    B, C = len(out), uni[key[0]].shape[1]

    def pair(k0, k1):
        w, ps, pw = torch.zeros(B), torch.zeros(B), torch.zeros(B)
        for i in range(B):
            a, c = prediction[k0][i][label[i]], prediction[k1][i][label[i]]
            if y_pred[k0][i] == label[i] or y_pred[k1][i] == label[i]:
                w[i] = max(a, c) - min(a, c)
            ps[i] = max(a, c)
            pw[i] = min(a, c)
        return w, ps, pw

    if len(key) == 2 and branch == "reference":
        loss_rs = 1 / C * torch.sum((uni[key[0]] - uni[key[1]]) ** 2, dim=1)
        w, ps, pw = pair(key[0], key[1])
        loss_kl = torch.mm(w.reshape(1, -1), F.kl_div(ps, pw, reduction="none").reshape(-1, 1)) / B
        loss_rs = torch.mm(w.reshape(1, -1), loss_rs.reshape(-1, 1)) / B
        ws = [w]
    else:
        pairs = [(k0, k1) for i, k0 in enumerate(key) for k1 in key[i + 1:]]  # (0,1), (0,2), (1,2) for three
        kl, rs, ws = 0, 0, []
        for k0, k1 in pairs:
            w, ps, pw = pair(k0, k1)
            r = 1 / C * torch.sum((prediction[k0] - prediction[k1]) ** 2, dim=1)
            kl = kl + torch.mm(w.reshape(1, -1), F.kl_div(ps, pw, reduction="none").reshape(-1, 1)) / B
            rs = rs + torch.mm(w.reshape(1, -1), r.reshape(-1, 1)) / B
            ws.append(w)
        loss_kl, loss_rs = kl / len(pairs), rs / len(pairs)
    total = total + sum(F.cross_entropy(uni[m], label) for m in key) + loss_rs.squeeze() + loss_kl.squeeze()
    return total, [w.detach() for w in ws]


# ----------------------------------------------------------------------------- set-up


def make(mods, seed, fusion="concat", **args):
    cfg = make_cfg(mods, fusion=fusion, balance="mbsd", balance_args=args)
    model = make_model(cfg)
    with torch.no_grad():  # a sharper head: some samples right in one modality only, some in none
        model.head.weight.mul_(6)
    inputs, y = make_batch(mods, 12, seed=seed)
    bal = BALANCERS.build("mbsd", cfg.balance, mods)
    bal.check(cfg.model, "none")
    aug = AUGMENTS.build("none", cfg.augment, mods)
    ctx = attach(cfg, model, aug, bal, [(inputs, y)])
    bal.on_epoch_start(ctx)
    return model, inputs, y, bal, aug, ctx


def params(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def grads(model, loss):
    return torch.autograd.grad(loss, [p for _, p in params(model)], allow_unused=True)


def assert_same_grads(model, mine, theirs):
    for (name, _), a, b in zip(params(model), mine, theirs):
        if a is None or b is None:
            assert a is None and b is None, name
            continue
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def mmvid_loss(model, inputs, y, bal, aug, ctx):
    model.train()
    out, base = aug.compute(model, inputs, y, ctx)
    return bal.loss(base, out, inputs, y, ctx)


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("mods", [AV, AVF], ids=["2mod", "3mod"])
def test_matches_balancebenchmark_training_step(mods):
    """Defaults (heads split, rs of the reference): loss 1e-6, every gradient rtol 1e-5 / atol 1e-6, over seeds
    with samples where a weight is active and samples where neither modality is right (w = 0)."""
    active = inactive = 0
    for seed in range(4):
        model, inputs, y, bal, aug, ctx = make(mods, seed)
        loss = mmvid_loss(model, inputs, y, bal, aug, ctx)
        ref, ws = ref_training_step(model, inputs, y)
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
        assert_same_grads(model, grads(model, loss), grads(model, ref))
        active += sum(int((w > 0).sum()) for w in ws)
        inactive += sum(int((w == 0).sum()) for w in ws)
    assert active > 0 and inactive > 0, f"both weight branches must be reached (active {active}, zero {inactive})"


def test_outside_the_window_the_loss_is_the_augmentations():
    model, inputs, y, bal, aug, ctx = make(AV, 0, start=1, end=2)
    out, base = aug.compute(model, inputs, y, ctx)
    assert bal.loss(base, out, inputs, y, ctx) is base  # epoch 0 < start
    torch.testing.assert_close(base, ref_training_step(model, inputs, y, in_window=False)[0])
    ctx.epoch = 2
    torch.testing.assert_close(bal.loss(base, out, inputs, y, ctx), ref_training_step(model, inputs, y)[0])
    ctx.epoch = 3
    assert bal.loss(base, out, inputs, y, ctx) is base


def test_rs_space_defaults_follow_the_reference_and_can_be_chosen():
    assert BALANCERS.build("mbsd", make_cfg(AV, balance="mbsd").balance, AV).rs == "logits"
    assert BALANCERS.build("mbsd", make_cfg(AVF, balance="mbsd").balance, AVF).rs == "probabilities"
    # Two modalities with rs=probabilities: the three-modality branch's formula on the one pair.
    for seed in range(2):
        model, inputs, y, bal, aug, ctx = make(AV, seed, rs="probabilities")
        loss = mmvid_loss(model, inputs, y, bal, aug, ctx)
        ref, _ = ref_training_step(model, inputs, y, branch="pairs")
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
        assert_same_grads(model, grads(model, loss), grads(model, ref))


def test_mask_heads_train_any_fusion():
    """heads=mask (paper Eq. 5) needs no split head: on decision fusion the unimodal CE reaches every encoder."""
    cfg = make_cfg(AV, fusion="decision", balance="mbsd", balance_args={"heads": "mask"})
    model = make_model(cfg)
    bal = BALANCERS.build("mbsd", cfg.balance, AV)
    bal.check(cfg.model, "none")
    aug = AUGMENTS.build("none", cfg.augment, AV)
    inputs, y = make_batch(AV, 8, seed=3)
    ctx = attach(cfg, model, aug, bal, [(inputs, y)])
    bal.on_epoch_start(ctx)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _, loss = train_step(model, aug, bal, ctx, inputs, y)
    assert torch.isfinite(loss)
    for m in AV:
        assert any(not torch.equal(p, before[f"encoders.{m}.{n}"]) for n, p in model.encoders[m].named_parameters())
    assert set(bal.log()) >= {"mbsd_kl", "mbsd_rs", "mbsd_weight", "mbsd_ce_audio", "mbsd_ce_video"}


@pytest.mark.parametrize("args,fusion,match", [({"heads": "linear"}, "concat", "balance.args.heads"),
                                               ({"rs": "features"}, "concat", "balance.args.rs"),
                                               ({"start": 5, "end": 2}, "concat", "before start"),
                                               ({}, "film", "balance.args.heads=split")])
def test_bad_options_are_one_line(args, fusion, match):
    cfg = make_cfg(AV, fusion=fusion, balance="mbsd", balance_args=args)
    with pytest.raises(MmvidError, match=match):
        BALANCERS.build("mbsd", cfg.balance, AV).check(cfg.model, "none")


def test_mixed_targets_use_each_modalitys_soft_target():
    """Under a feature-stage mix with partner weight 0.3, p_m = 0.7 p_m[y] + 0.3 p_m[y_pi] and a modality is
    right when it predicts y (the heavier class); computed here by hand on random logits."""
    from mmvid.augment.base import Mix, modality_mix
    from mmvid.balance.mbsd import pair_terms

    g = torch.Generator().manual_seed(0)
    la, lv = torch.randn(10, 4, generator=g) * 3, torch.randn(10, 4, generator=g) * 3
    y, perm = torch.arange(10) % 4, torch.randperm(10, generator=g)
    mix = Mix("feature", perm, {"*": 0.3}, 0.3)
    w, kl, rs = pair_terms(la, lv, y, modality_mix(mix, "audio"), modality_mix(mix, "video"), "logits")
    pa, pv = la.softmax(1), lv.softmax(1)
    ta = 0.7 * pa.gather(1, y[:, None])[:, 0] + 0.3 * pa.gather(1, y[perm][:, None])[:, 0]
    tv = 0.7 * pv.gather(1, y[:, None])[:, 0] + 0.3 * pv.gather(1, y[perm][:, None])[:, 0]
    right = (la.argmax(1) == y) | (lv.argmax(1) == y)
    assert right.any() and not right.all()
    torch.testing.assert_close(w, torch.where(right, (ta - tv).abs(), torch.zeros(10)))
    s, u = torch.maximum(ta, tv), torch.minimum(ta, tv)
    torch.testing.assert_close(kl, u * u.log() - u * s)
    torch.testing.assert_close(rs, ((la - lv) ** 2).mean(1))
