"""MS-Mix against its reference code, HongyuZhu-s/MS-Mix: ``models/MS_MIX.py`` (``IntensityPredictor``,
``compute_kl_loss``, ``MS_Mix``, the 2-D-feature variant) and the loss of ``trains/ALMT.py``
(CE(unmixed) + 0.7 mixed CE + 0.5 KL). The reference computation is re-written here from reading it and fed
the same tensors, weights and random draws as mmvid.

Comparable parts: the SASS similarity and pair draw, the SIG ratios, the mixed features and targets, the
SAL loss, the intensity predictor and the total loss. Not comparable: the reference's random numbers come
from torch's global RNG (randperm, torch.distributions.Beta), mmvid's from the run's seeded generator;
the tests hand both the same draws.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _methods_util import CLASSES, attach, make_batch, make_cfg, make_model
from mmvid.augment.base import beta_sample
from mmvid.augment.msmix import (IntensityHead, alignment_loss, label_groups, select_pairs, sig_lambdas,
                                 similarity)
from mmvid.errors import MmvidError
from mmvid.registry import AUGMENTS, BALANCERS, load_plugins

load_plugins()
AV = ["audio", "video"]


# ----------------------------------------------------------------------------- the reference, in test code


def ref_intensity(head: IntensityHead, x: torch.Tensor) -> torch.Tensor:
    """IntensityPredictor.forward on x (B, d) (the reference's input) or (B, N, d); 4 heads, no output projection."""
    two_d = x.dim() == 2
    b, d = x.shape[0], x.shape[-1]
    pad = (4 - d % 4) % 4
    xp = torch.cat([x, x.new_zeros(*x.shape[:-1], pad)], -1) if pad else x
    q, k, v = (head.qkv(xp)).split(d + pad, dim=-1)
    split = lambda t: t.reshape(b, -1, 4, (d + pad) // 4).permute(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k) / ((d + pad) // 4) ** 0.5, dim=-1)
    att = torch.einsum("bhij,bhjd->bhid", weights, v).permute(0, 2, 1, 3).reshape(b, -1, d + pad)
    res = xp.unsqueeze(1) if two_d else xp
    h = F.layer_norm(att + res, (d + pad,), head.norm.weight, head.norm.bias, head.norm.eps).mean(1)
    return (torch.tanh(h @ head.out.weight.T + head.out.bias) * 3).squeeze(-1)


def ref_similarity(feats: list[torch.Tensor]) -> torch.Tensor:
    sims = [F.normalize(f, p=2, dim=1) @ F.normalize(f, p=2, dim=1).T for f in feats]
    total = (sum(sims) / len(sims)).fill_diagonal_(0)
    off = total[~torch.eye(len(total), dtype=torch.bool)]
    lo, hi = off.min(), off.max()
    total = (total - lo) / (hi - lo) if hi - lo > 1e-8 else torch.ones_like(total) * 0.5
    return total.fill_diagonal_(0)


def ref_pairs(total: torch.Tensor, tau: float, perm_seed: int):
    b = len(total)
    valid = torch.nonzero(total > tau)
    if len(valid) < b:
        upper = torch.triu(torch.ones_like(total), diagonal=1).bool()
        flat = torch.where(upper, total, torch.tensor(-1.0)).flatten()
        top = torch.topk(flat, 2 * b).indices
        valid = torch.stack([top // b, top % b], dim=1)
    chosen = valid[torch.randperm(len(valid), generator=torch.Generator().manual_seed(perm_seed))[:b]]
    return chosen[:, 0], chosen[:, 1]


def ref_sig(intensity: list[torch.Tensor], idx1, idx2, lam_base):
    lams = []
    for i in intensity:
        w = i.abs()
        w = (w - w.min()) / (w.max() - w.min() + 1e-8)
        lams.append((lam_base + (w[idx1] + 1e-8) / (w[idx1] + w[idx2] + 2e-8)) / 2)
    return lams, sum(lams) / len(lams)


def ref_kl(intensity: list[torch.Tensor], label01: torch.Tensor) -> torch.Tensor:
    """compute_kl_loss with the [0, 1] target already mapped: 1000 * sum_m kl_div(log q_m, t, batchmean)."""
    t = F.softmax(label01, dim=0) + 1e-8
    total = 0
    for i in intensity:
        q = F.softmax(i.abs() / 3.0, dim=0) + 1e-8
        total = total + F.kl_div(torch.log(q), t, reduction="batchmean", log_target=False)
    return total * 1000


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("dim,tokens", [(32, 1), (30, 1), (32, 5), (30, 3)])
def test_intensity_head_is_the_reference_predictor(dim, tokens):
    """Same weights, same input: (B, d) as the reference's MS_Mix feeds it (one token), and token sequences;
    d = 30 exercises the zero padding to a multiple of the 4 heads."""
    torch.manual_seed(0)
    head = IntensityHead(dim)
    x = torch.randn(6, tokens, dim)
    ref = ref_intensity(head, x[:, 0] if tokens == 1 else x)
    assert torch.allclose(head(x), ref, atol=1e-6)
    assert head(x).abs().max() < 3


@pytest.mark.parametrize("tau", [0.4, 0.0, 0.95])
def test_sass_similarity_and_pair_draw_match_the_reference(tau):
    """tau = 0.95 leaves fewer than B candidates: the reference's fallback to the 2B most similar pairs."""
    g = torch.Generator().manual_seed(1)
    feats = {m: torch.randn(10, 16, generator=g) for m in AV}
    y = torch.randint(0, CLASSES, (10,), generator=g)
    total = ref_similarity(list(feats.values()))
    assert torch.allclose(similarity(feats), total, atol=1e-6)
    idx1, idx2 = select_pairs(similarity(feats), y, None, tau, torch.Generator().manual_seed(7))
    r1, r2 = ref_pairs(total, tau, perm_seed=7)
    assert torch.equal(idx1, r1) and torch.equal(idx2, r2)
    assert len(idx1) == 10 and (idx1 != idx2).all()


def test_sass_with_label_groups_never_crosses_a_group():
    """The classification adaptation: with ``groups`` the reference draw runs over compatible pairs only."""
    names = ["NEU", "HAP", "SAD", "FEA"]
    group_of = label_groups({"positive": ["HAP"], "negative": ["SAD", "FEA"]}, names)
    g = torch.Generator().manual_seed(2)
    for tau in (0.4, 0.99):
        y = torch.randint(0, 4, (12,), generator=g)
        feats = {m: torch.randn(12, 8, generator=g) for m in AV}
        idx1, idx2 = select_pairs(similarity(feats), y, group_of, tau, g)
        assert len(idx1) > 0 and (group_of[y[idx1]] == group_of[y[idx2]]).all() and (idx1 != idx2).all()


def test_sig_ratios_mixed_features_targets_and_sal_match_the_reference():
    g = torch.Generator().manual_seed(3)
    intensity = {m: 3 * torch.tanh(torch.randn(8, generator=g)) for m in AV}
    intensity["video"][2] = intensity["video"][5] = 0.0  # |I| ties at the minimum: w = 0 for both members of a pair
    idx1, idx2 = torch.tensor([0, 2, 5, 7, 1]), torch.tensor([3, 5, 2, 7 - 1, 4])
    lam_base = torch.rand(5, generator=g)
    lams = sig_lambdas(intensity, idx1, idx2, lam_base)
    ref, ref_label = ref_sig(list(intensity.values()), idx1, idx2, lam_base)
    for m, r in zip(AV, ref):
        assert torch.allclose(lams[m], r, atol=1e-7)
    assert lams["video"][1] == pytest.approx(0.5 * (float(lam_base[1]) + 0.5))  # 0/0 resolved as the reference does
    s = torch.rand(8, generator=g)
    assert float(alignment_loss(intensity, s)) == pytest.approx(float(ref_kl(list(intensity.values()), s)), rel=1e-5)
    assert torch.allclose(torch.stack(list(lams.values())).mean(0), ref_label)


@pytest.mark.parametrize("intensity_input", ["feature", "tokens"])
def test_msmix_loss_matches_the_reference_on_one_batch(intensity_input):
    """CE(original) + 0.7 mean mixed soft CE + 0.5 SAL, mixed features through the same fusion and head."""
    cfg = make_cfg(AV, augment="msmix", augment_args={"intensity_input": intensity_input})
    model = make_model(cfg).eval()
    inputs, y = make_batch(AV, 8, seed=4)
    aug = AUGMENTS.build("msmix", cfg.augment, AV)
    ctx = attach(cfg, model, aug, BALANCERS.build("none", cfg.balance, AV), [(inputs, y)])
    ctx.generator = torch.Generator().manual_seed(5)
    out, loss = aug.compute(model, inputs, y, ctx)

    with torch.no_grad():
        toks = {m: model.encoders[m].tokens(inputs[m]) for m in AV}
        f = {m: toks[m].mean(1) for m in AV}
        logits = model.head(model.fusion(f))
        src = {m: f[m] if intensity_input == "feature" else toks[m] for m in AV}
        inten = [ref_intensity(aug.heads[m], src[m]) for m in AV]
        gen = torch.Generator().manual_seed(5)  # the run's generator: the pair draw, then one Beta(2, 2) per pair
        total = ref_similarity(list(f.values()))
        b = len(y)
        cand = torch.nonzero(total > 0.4)
        assert len(cand) >= b, "this batch should take the main branch"
        chosen = cand[torch.randperm(len(cand), generator=gen)[:b]]
        idx1, idx2 = chosen[:, 0], chosen[:, 1]
        lam_base = torch.tensor([beta_sample(2.0, gen) for _ in range(b)])
        lams, lam_label = ref_sig(inten, idx1, idx2, lam_base)
        mixed = {m: lam[:, None] * f[m][idx1] + (1 - lam[:, None]) * f[m][idx2] for m, lam in zip(AV, lams)}
        o = model.head(model.fusion(mixed))
        mix_cls = F.cross_entropy(o, y[idx1], reduction="none") * lam_label + \
            F.cross_entropy(o, y[idx2], reduction="none") * (1 - lam_label)
        p_true = logits.softmax(1)[torch.arange(b), y]
        ref_loss = mix_cls.mean() * 0.7 + ref_kl(inten, p_true) * 0.5 + F.cross_entropy(logits, y)
    assert torch.allclose(out.logits, logits, atol=1e-5)
    assert float(loss.detach()) == pytest.approx(float(ref_loss), rel=1e-5)


def test_mixed_loss_trains_the_intensity_heads_through_the_ratios():
    """The reference does not detach the SIG ratios: with SAL switched off the heads still get gradients."""
    cfg = make_cfg(AV, augment="msmix", augment_args={"sal_weight": 0.0})
    model = make_model(cfg)
    inputs, y = make_batch(AV, 8, seed=6)
    aug = AUGMENTS.build("msmix", cfg.augment, AV)
    ctx = attach(cfg, model, aug, BALANCERS.build("none", cfg.balance, AV), [(inputs, y)])
    _, loss = aug.compute(model, inputs, y, ctx)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in aug.heads.parameters())


def test_msmix_options_are_checked():
    for key in ("pairing", "sal", "intensity_input"):
        cfg = make_cfg(AV, augment="msmix", augment_args={key: "bogus"})
        with pytest.raises(MmvidError, match=f"augment.args.{key}='bogus' is not valid for msmix"):
            AUGMENTS.build("msmix", cfg.augment, AV)
