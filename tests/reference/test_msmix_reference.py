"""MS-Mix against its reference code, HongyuZhu-s/MS-Mix ``models/MS_MIX.py`` (``IntensityPredictor``,
``compute_kl_loss``, ``MS_Mix``: the variant on pooled (B, d) features; ``MS_Mix_threeD``) and the loss of
``trains/ALMT.py`` (CE(unmixed) + 0.7 mixed CE + 0.5 KL). Each reference computation is re-typed below from
reading it (``ref_*``) and fed the same tensors, weights and random draws as mmvid.

What is compared with what (also in docs/methods.md, "MS-Mix"):

* The reference's own computation, literally: the predictor on (B, d) features (the 2-D path, mmvid's default
  ``intensity_input: feature``), the SASS similarity and pair draw, the SIG ratios, mixed features and label
  weights, ``compute_kl_loss`` with ground-truth intensity labels (mmvid's default ``sal_target: labels``) and
  the total loss of one batch.
* A corrected rewrite, not the reference: the predictor on token sequences (B, N, d) with a per-sample
  residual (``intensity_input: tokens``). The reference's predictor on tokens adds ``x.unsqueeze(1)``, which
  broadcasts every sample's residual across the batch; a test shows that, and that mmvid's option does not.
* mmvid's stand-in, not the reference: ``sal_target: confidence`` (the detached true-class probability in
  place of the ground-truth intensity).

Not comparable: the reference's random numbers come from torch's global RNG (randperm, torch.distributions.Beta),
mmvid's from the run's seeded generator; the tests hand both the same draws.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _methods_util import CLASSES, attach, make_batch, make_cfg, make_ctx, make_model

from mmvid.augment.base import beta_sample
from mmvid.augment.msmix import IntensityHead, alignment_loss, label_groups, select_pairs, sig_lambdas, similarity
from mmvid.data.cache import Intensity
from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]


# ----------------------------------------------------------------------------- the reference, in test code


def ref_predictor(head: IntensityHead, x: torch.Tensor, residual: str = "reference") -> torch.Tensor:
    """``IntensityPredictor.forward`` (d <= 2000: no reduction) with mmvid's weights: zero-pad d to a multiple of
    the 4 heads, fused q/k/v, softmax(q k^T / sqrt(d_h)) v, ``norm1(attn + x.unsqueeze(1))``, mean over dim 1,
    ``output_proj``, 3 tanh. On (B, d) this is (B,). On (B, N, d) the reference's ``x.unsqueeze(1)`` broadcasts
    to (B, B, N, d) and the mean runs over the batch: (B, N). ``residual="per_sample"`` is the corrected rewrite
    (attn + x, mean over the N tokens), which is not the reference."""
    b = x.shape[0]
    pad = (4 - x.shape[-1] % 4) % 4
    x = F.pad(x, (0, pad)) if pad else x
    dp = x.shape[-1]
    q, k, v = [t.reshape(b, -1, 4, dp // 4).transpose(1, 2) for t in (x @ head.qkv.weight.T + head.qkv.bias).chunk(3, -1)]
    att = (torch.softmax(q @ k.transpose(-2, -1) * (dp // 4) ** -0.5, dim=-1) @ v).transpose(1, 2).reshape(b, -1, dp)
    res = x.unsqueeze(1) if residual == "reference" else x
    h = F.layer_norm(att + res, (dp,), head.norm.weight, head.norm.bias, head.norm.eps).mean(1)
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


def ref_compute_kl_loss(intensity: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """``compute_kl_loss`` as written, for any number of modalities: labels (B, 1) -> |labels| / 3, predictions
    |I| / 3, each softmax over the batch + 1e-8, 1000 * sum_m kl_div(log p_m, p_labels, batchmean)."""
    labels = labels.squeeze(-1)
    to_prob = lambda v: F.softmax(v, dim=0) + 1e-8  # noqa: E731
    target = to_prob(labels.abs() / 3.0)
    total = 0
    for i in intensity:
        total = total + F.kl_div(torch.log(to_prob(i.abs() / 3.0)), target, reduction="batchmean", log_target=False)
    return total * 1000


def with_intensity(ctx, table_value: float = 0.5):
    """``ctx.info`` of a cache with intensity levels (what ``setup`` looks for); the values do not matter here."""
    codes = np.zeros(1, dtype=np.int8)
    ctx.info = SimpleNamespace(class_names=ctx.info.class_names, path=None,
                               intensity=Intensity(codes, ["XX"], np.full((CLASSES, 1), table_value)))
    return ctx


# ----------------------------------------------------------------------------- the intensity predictor


@pytest.mark.parametrize("dim", [32, 30])
def test_intensity_head_on_pooled_features_is_the_reference_predictor(dim):
    """The 2-D path (``intensity_input: feature``, the default): mmvid's head on the pooled feature as one token
    (B, 1, d) equals the reference's ``IntensityPredictor`` on (B, d), to 1e-6; d = 30 exercises the zero padding
    to a multiple of the 4 heads."""
    torch.manual_seed(0)
    head = IntensityHead(dim)
    x = torch.randn(6, dim)
    out = head(x[:, None])
    assert torch.allclose(out, ref_predictor(head, x), atol=1e-6)
    assert out.shape == (6,) and out.abs().max() < 3


@pytest.mark.parametrize("dim,tokens", [(32, 5), (30, 3)])
def test_tokens_option_is_the_corrected_predictor_not_the_references(dim, tokens):
    """``intensity_input: tokens``: mmvid equals the predictor with a per-sample residual to 1e-6. The reference's
    predictor on the same tokens broadcasts x.unsqueeze(1) across the batch: changing only samples 1..B-1 moves
    its intensity of sample 0, while mmvid's stays bit-identical."""
    torch.manual_seed(1)
    head = IntensityHead(dim).requires_grad_(False)
    x = torch.randn(6, tokens, dim)
    assert torch.allclose(head(x), ref_predictor(head, x, residual="per_sample"), atol=1e-6)
    other = x.clone()
    other[1:] = torch.randn(5, tokens, dim, generator=torch.Generator().manual_seed(2))
    ref_a, ref_b = ref_predictor(head, x), ref_predictor(head, other)  # (B, N): the reference's shape on tokens
    assert ref_a.shape == (6, tokens)
    moved = float((ref_a[0].max() - ref_b[0].max()).abs())  # MS_Mix_threeD: the max over tokens
    assert moved > 1e-3, "the reference's predictor on tokens should couple the samples"
    assert torch.equal(head(x)[0], head(other)[0])


# ----------------------------------------------------------------------------- SASS


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


def test_sass_with_label_groups_pairs_only_classes_that_share_a_group():
    """The classification adaptation (not in the reference): the draw runs over pairs whose classes share a
    group; a class in two groups (CREMA-D's NEU) pairs with both, classes of different groups never."""
    names = ["NEU", "HAP", "SAD", "FEA"]
    compat = label_groups({"positive": ["NEU", "HAP"], "negative": ["NEU", "SAD", "FEA"]}, names)
    assert compat.tolist() == [[True, True, True, True], [True, True, False, False],
                               [True, False, True, True], [True, False, True, True]]
    g = torch.Generator().manual_seed(2)
    seen = set()
    for tau in (0.4, 0.99):
        for _ in range(10):
            y = torch.randint(0, 4, (12,), generator=g)
            feats = {m: torch.randn(12, 8, generator=g) for m in AV}
            idx1, idx2 = select_pairs(similarity(feats), y, compat, tau, g)
            assert len(idx1) > 0 and compat[y[idx1], y[idx2]].all() and (idx1 != idx2).all()
            seen |= {(names[a], names[b]) for a, b in zip(y[idx1].tolist(), y[idx2].tolist())}
    assert ("NEU", "HAP") in seen and ("NEU", "SAD") in seen
    with pytest.raises(MmvidError, match="augment.args.groups leaves out class FEA"):
        label_groups({"positive": ["HAP"], "negative": ["NEU", "SAD"]}, names)


# ----------------------------------------------------------------------------- SIG and SAL


def test_sig_ratios_mixed_features_and_label_weights_match_the_reference():
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
    assert torch.allclose(torch.stack(list(lams.values())).mean(0), ref_label)


def test_sal_on_intensity_labels_is_the_references_compute_kl_loss():
    """``sal_target: labels``: mmvid's SAL on targets s in [0, 1] equals ``compute_kl_loss`` on the regression
    labels y = 3 s (which it maps back to |y| / 3), to a relative 1e-5; CREMA-D's level targets included."""
    g = torch.Generator().manual_seed(4)
    intensity = {m: 3 * torch.tanh(torch.randn(8, generator=g)) for m in AV}
    for s in (torch.rand(8, generator=g), torch.tensor([0.0, 0.5, 0.5, 0.2, 0.8, 0.5, 0.0, 0.5])):
        ref = ref_compute_kl_loss(list(intensity.values()), (3 * s)[:, None])
        assert float(alignment_loss(intensity, s)) == pytest.approx(float(ref), rel=1e-5)


# ----------------------------------------------------------------------------- one batch, end to end


@pytest.mark.parametrize("args", [{}, {"sal_target": "confidence"}, {"intensity_input": "tokens"}])
def test_msmix_loss_matches_the_reference_on_one_batch(args):
    """CE(original) + 0.7 mean mixed soft CE + 0.5 SAL, mixed features through the same fusion and head, to a
    relative 1e-5. ``{}`` (the defaults) is the reference's computation: predictor on pooled features, SAL on
    ground-truth intensities. ``sal_target: confidence`` swaps in mmvid's stand-in target; ``intensity_input:
    tokens`` the corrected predictor on token sequences (neither is the reference)."""
    cfg = make_cfg(AV, augment="msmix", augment_args=args)
    model = make_model(cfg).eval()
    inputs, y = make_batch(AV, 8, seed=4)
    aug = AUGMENTS.build("msmix", cfg.augment, AV)
    ctx = attach(cfg, model, aug, BALANCERS.build("none", cfg.balance, AV), [(inputs, y)])
    labels = args.get("sal_target", "labels") == "labels"
    if labels:
        aug.setup(model, with_intensity(ctx))
        assert aug.needs_intensity and not aug.notes
        ctx.batch_intensity = torch.tensor([0.0, 0.5, 0.2, 0.8, 0.5, 0.5, 0.0, 0.8])  # CREMA-D-like targets
    ctx.generator = torch.Generator().manual_seed(5)
    out, loss = aug.compute(model, inputs, y, ctx)

    with torch.no_grad():
        toks = {m: model.encoders[m].tokens(inputs[m]) for m in AV}
        f = {m: toks[m].mean(1) for m in AV}
        logits = model.head(model.fusion(f))
        if args.get("intensity_input") == "tokens":
            inten = [ref_predictor(aug.heads[m], toks[m], residual="per_sample") for m in AV]
        else:
            inten = [ref_predictor(aug.heads[m], f[m]) for m in AV]
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
        target = 3 * ctx.batch_intensity if labels else 3 * logits.softmax(1)[torch.arange(b), y]
        ref_loss = mix_cls.mean() * 0.7 + ref_compute_kl_loss(inten, target[:, None]) * 0.5 + F.cross_entropy(logits, y)
    assert torch.allclose(out.logits, logits, atol=1e-5)
    assert float(loss.detach()) == pytest.approx(float(ref_loss), rel=1e-5)
    assert aug.log()["msmix_sal_labels"] == float(labels)


def test_a_cache_without_intensity_levels_falls_back_to_confidence_with_a_note():
    """``sal_target: labels`` on a cache that has no levels (another dataset, or a CREMA-D cache of an older
    mmvid): one note, and SAL aligns with the true-class confidence; ``confidence`` asked for: no note."""
    cfg = make_cfg(AV, augment="msmix")
    model = make_model(cfg)
    aug = AUGMENTS.build("msmix", cfg.augment, AV)
    ctx = make_ctx(cfg, model, None, [])
    aug.setup(model, ctx)
    assert aug.sal_from == "confidence" and not aug.needs_intensity
    assert len(aug.notes) == 1 and "no intensity levels" in aug.notes[0] and "sal_target=confidence" in aug.notes[0]
    aug.setup(model, with_intensity(ctx))
    assert aug.sal_from == "labels" and aug.needs_intensity and not aug.notes
    cfg = make_cfg(AV, augment="msmix", augment_args={"sal_target": "confidence"})
    aug = AUGMENTS.build("msmix", cfg.augment, AV)
    aug.setup(model, with_intensity(ctx))
    assert aug.sal_from == "confidence" and not aug.needs_intensity and not aug.notes


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


def test_msmix_defaults_are_the_references_path():
    aug = AUGMENTS.build("msmix", make_cfg(AV, augment="msmix").augment, AV)
    s = aug.settings
    assert (s.pairing, s.sal, s.intensity_input, s.sal_target) == ("reference", "reference", "feature", "labels")


def test_msmix_options_are_checked():
    for key in ("pairing", "sal", "intensity_input", "sal_target"):
        cfg = make_cfg(AV, augment="msmix", augment_args={key: "bogus"})
        with pytest.raises(MmvidError, match=f"augment.args.{key}='bogus' is not valid for augmentation 'msmix'"):
            AUGMENTS.build("msmix", cfg.augment, AV)
    with pytest.raises(MmvidError, match=r"augment.args.sal_targets: augmentation 'msmix' has no setting 'sal_targets'; did you mean augment.args.sal_target\?"):
        AUGMENTS.build("msmix", make_cfg(AV, augment="msmix", augment_args={"sal_targets": "labels"}).augment, AV)
    with pytest.raises(MmvidError, match="augment.args.groups=.* is not valid for augmentation 'msmix'"):
        AUGMENTS.build("msmix", make_cfg(AV, augment="msmix", augment_args={"groups": ["HAP"]}).augment, AV)
