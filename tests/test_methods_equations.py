"""Each method against its equation (METHODS.md) on small hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _methods_util import CLASSES, attach, make_batch, make_cfg, make_model, save_teachers, train_step

from mmvid.augment.base import Mix, mixed_cross_entropy, modality_mix, target_probability
from mmvid.augment.bmm import imbalance, weak_lambdas
from mmvid.augment.msmix import alignment_loss, label_groups, select_partners, sig_lambdas, similarity
from mmvid.balance.atf import atf_lr_ratios
from mmvid.balance.base import modality_scores
from mmvid.balance.gblend import gblend_weights
from mmvid.balance.ogm_ge import ogm_coefficients
from mmvid.balance.pmr import class_prototypes, pmr_coefficients, prototype_logits
from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS, FUSIONS

load_plugins()
AV = ["audio", "video"]


def softmax_row(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


# ----------------------------------------------------------------------------- imbalance (Eqs. 5-7)


def test_rho_from_known_logits():
    la = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    lv = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    y = torch.tensor([0, 1])
    s_a = softmax_row([2, 0, 0])[0] + softmax_row([0, 1, 0])[1]
    s_v = softmax_row([0, 0, 1])[0] + softmax_row([0.5, 0.5, 0])[1]
    out = type("Out", (), {"mix": None})()
    ctx = type("Ctx", (), {"all_reduce": staticmethod(lambda t: t)})()
    scores = modality_scores({"audio": la, "video": lv}, out, y, ctx)
    assert scores["audio"] == pytest.approx(s_a) and scores["video"] == pytest.approx(s_v)
    rho, ratios = imbalance(scores, AV)
    assert rho == pytest.approx(s_a / s_v) and ratios["video"] == pytest.approx(s_v / s_a)


@pytest.mark.parametrize("mapping", ["scaled", "inside"])
def test_bmm_lambda_follows_rho_through_tanh(mapping):
    lams = weak_lambdas({"audio": 30.0, "video": 10.0}, AV, beta=0.5, mapping=mapping)
    expected = 0.5 * math.tanh(3 - 1) if mapping == "scaled" else math.tanh(0.5 * (3 - 1))
    assert lams == {"audio": 0.0, "video": pytest.approx(expected)}
    # N > 2: rho_m = s_m / mean_k s_k; every modality below the mean is weak.
    lams3 = weak_lambdas({"audio": 6.0, "video": 2.0, "flow": 4.0}, ["audio", "video", "flow"], beta=1.0)
    assert lams3["audio"] == 0.0 and lams3["flow"] == 0.0 and lams3["video"] == pytest.approx(math.tanh(2 - 1))


def test_bmm_rho_split_val_reads_the_held_out_scores():
    """augment.rho_split=val: rho and lambda follow the validation split's scores, not the training split's."""
    cfg = make_cfg(AV, augment="bmm")
    cfg.augment.args["warmup"], cfg.augment.args["rho_split"] = 0, "val"
    aug = AUGMENTS.build("bmm", cfg.augment, AV)
    ctx = type("Ctx", (), {"train_scores": {"audio": {"score": 10.0}, "video": {"score": 20.0}},  # video ahead on train
                           "val_scores": {"audio": {"score": 9.0}, "video": {"score": 6.0}},  # audio ahead held out
                           "epoch": 1, "generator": torch.Generator().manual_seed(0)})()
    aug.on_epoch_start(ctx)
    beta = aug.settings.beta  # the default, 0.2
    assert aug.rho == pytest.approx(1.5)
    assert aug.lambdas == {"audio": 0.0, "video": pytest.approx(beta * math.tanh(0.5))}
    cfg.augment.args["rho_split"] = "train"
    aug = AUGMENTS.build("bmm", cfg.augment, AV)  # settings are read (and checked) once, when it is built
    aug.on_epoch_start(ctx)
    assert aug.rho == pytest.approx(0.5) and aug.lambdas == {"audio": pytest.approx(beta * math.tanh(1.0)), "video": 0.0}


def test_bmm_leaves_the_strong_modality_untouched_and_mixes_the_weak_one_by_lambda():
    cfg = make_cfg(AV, augment="bmm")
    cfg.augment.args["warmup"], cfg.augment.args["beta"] = 1, 0.8
    aug = AUGMENTS.build("bmm", cfg.augment, AV)
    gen = torch.Generator().manual_seed(0)
    ctx = type("Ctx", (), {"train_scores": {"audio": {"score": 30.0}, "video": {"score": 10.0}}, "epoch": 0, "generator": gen})()
    aug.on_epoch_start(ctx)  # still warming up: plain training
    assert aug.sample(torch.arange(4), ctx) is None and aug.rho == pytest.approx(3.0)
    ctx.epoch = 1
    aug.on_epoch_start(ctx)
    lam = 0.8 * math.tanh(2.0)
    y = torch.tensor([0, 1, 2, 3])
    mix = aug.sample(y, ctx)
    feats = {"audio": torch.randn(4, 5), "video": torch.randn(4, 5)}
    mixed = mix.apply(feats)
    assert torch.equal(mixed["audio"], feats["audio"])
    assert torch.allclose(mixed["video"], (1 - lam) * feats["video"] + lam * feats["video"][mix.perm])
    target = mix.soft_target(y, 4)
    assert torch.allclose(target.sum(1), torch.ones(4))
    assert torch.allclose(target, (1 - lam) * F.one_hot(y, 4) + lam * F.one_hot(y[mix.perm], 4))
    assert aug.log() == {"bmm_rho": pytest.approx(3.0), "lambda_audio": 0.0, "lambda_video": pytest.approx(lam),
                         "bmm_stage_input": 0, "bmm_unimodal_head": 0}
    # In the model, the audio feature the fusion receives is the encoder's, unmixed.
    model = make_model(make_cfg(AV)).eval()
    inputs, _ = make_batch(AV, 4)
    out = model(inputs, mix=mix)
    assert torch.allclose(out.features["audio"], model.encoders["audio"](inputs["audio"]))
    assert out.mix is mix and modality_mix(mix, "audio") is None and modality_mix(mix, "video").target_weight == lam


# ----------------------------------------------------------------------------- mixup / MM


@pytest.mark.parametrize("name", ["mixup", "mm"])
def test_mixup_label_rows_sum_to_one_and_loss_is_the_lambda_mix(name):
    cfg = make_cfg(AV, augment=name)
    cfg.augment.args["alpha"] = 0.4
    aug = AUGMENTS.build(name, cfg.augment, AV)
    ctx = type("Ctx", (), {"generator": torch.Generator().manual_seed(3)})()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    for _ in range(5):
        mix = aug.sample(y, ctx)
        target = mix.soft_target(y, CLASSES)
        assert torch.allclose(target.sum(1), torch.ones(len(y)))
        logits = torch.randn(len(y), CLASSES)
        w = mix.target_weight
        expected = (1 - w) * F.cross_entropy(logits, y) + w * F.cross_entropy(logits, y[mix.perm])
        assert mixed_cross_entropy(logits, y, mix) == pytest.approx(float(expected), rel=1e-5)
    assert mix.stage == ("input" if name == "mixup" else "fused")


def test_mm_mixes_the_fused_feature_and_decision_fusion_mixes_every_modality_alike():
    cfg = make_cfg(AV, fusion="decision")
    model = make_model(cfg).eval()
    inputs, _ = make_batch(AV, 4)
    perm = torch.tensor([1, 0, 3, 2])
    mix = Mix("fused", perm, {"fused": 0.3}, 0.3)
    out = model(inputs, mix=mix)
    plain = model(inputs)
    h = plain.fused
    assert torch.allclose(out.fused, 0.7 * h + 0.3 * h[perm], atol=1e-6)
    z = {m: 0.7 * plain.features[m] + 0.3 * plain.features[m][perm] for m in AV}
    heads = model.head.heads
    expected = (heads["audio"](z["audio"]) + heads["video"](z["video"])) / 2
    assert torch.allclose(out.logits, expected, atol=1e-5)


# ----------------------------------------------------------------------------- fusions


def test_fusion_equations():
    torch.manual_seed(0)
    za, zv = torch.randn(3, 6), torch.randn(3, 6)
    feats = {"audio": za, "video": zv}
    dims = {"audio": 6, "video": 6}
    assert torch.equal(FUSIONS.build("sum", dims, form="feature")(feats), za + zv)
    film = FUSIONS.build("film", dims)
    gamma, beta = film.film(za).chunk(2, dim=1)
    assert torch.allclose(film(feats), gamma * zv + beta)
    big = FUSIONS.build("bigated", dims)
    expected = torch.cat([torch.sigmoid(big.gates["audio"](zv)) * za, torch.sigmoid(big.gates["video"](za)) * zv], 1)
    assert torch.allclose(big(feats), expected)
    mm = FUSIONS.build("mmtm", dims).eval()
    assert torch.equal(mm(feats), torch.cat([za, zv], 1)), "MMTM acts between encoder stages; its fusion concatenates"


def test_unimodal_logits_mask_the_other_modality():
    model = make_model(make_cfg(AV, fusion="bigated")).eval()
    inputs, _ = make_batch(AV, 3)
    out = model(inputs)
    uni = model.unimodal_logits(out.features)
    masked = {"audio": out.features["audio"], "video": torch.zeros_like(out.features["video"])}
    assert torch.allclose(uni["audio"], model.head(model.fusion(masked)))


# ----------------------------------------------------------------------------- OGM-GE


def test_ogm_coefficient_formula():
    k = ogm_coefficients({"audio": 3.0, "video": 1.5}, alpha=0.8)
    assert k == {"audio": pytest.approx(1 - math.tanh(0.8 * 2.0)), "video": 1.0}
    k3 = ogm_coefficients({"audio": 4.0, "video": 1.0, "flow": 3.0}, alpha=0.5)
    assert k3["audio"] == pytest.approx(1 - math.tanh(0.5 * 4.0 / 2.0)) and k3["video"] == 1.0
    assert k3["flow"] == pytest.approx(1 - math.tanh(0.5 * 3.0 / 2.5))


def _ogm_after_forward_backward(cfg):
    """An OGM-GE balancer attached to a fresh model whose loss on one batch has been back-propagated."""
    model = make_model(cfg)
    inputs, y = make_batch(AV, 8)
    bal = BALANCERS.build("ogm-ge", cfg.balance, AV)
    ctx = attach(cfg, model, AUGMENTS.build("none", cfg.augment, AV), bal, [(inputs, y)])
    out = model(inputs)
    F.cross_entropy(out.logits, y).backward()
    return model, bal, ctx, out, y


def test_ogm_scales_the_strong_encoder_gradients_and_leaves_the_weak_ones():
    cfg = make_cfg(AV, balance="ogm-ge", balance_args={"alpha": 0.8, "ge": False, "params": "all"})
    model, bal, ctx, out, y = _ogm_after_forward_backward(cfg)
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        uni = model.unimodal_logits({m: z.detach() for m, z in out.features.items()})
    s = {m: float(uni[m].softmax(1).gather(1, y[:, None]).sum()) for m in AV}
    strong, weak = ("audio", "video") if s["audio"] > s["video"] else ("video", "audio")
    k_strong = 1 - math.tanh(0.8 * s[strong] / s[weak])
    bal.after_backward(model, out, y, ctx)
    for n, p in model.named_parameters():
        if n.startswith(f"encoders.{strong}."):
            assert torch.allclose(p.grad, k_strong * before[n], rtol=1e-5, atol=1e-8), n
        else:
            assert torch.equal(p.grad, before[n]), n
    assert bal.log()[f"ogm_coeff_{strong}"] == pytest.approx(k_strong) and bal.log()[f"ogm_coeff_{weak}"] == 1.0


def test_ogm_ge_noise_is_the_same_for_equal_seeds():
    grads = []
    for _ in range(2):
        cfg = make_cfg(AV, balance="ogm-ge")
        model, bal, ctx, out, y = _ogm_after_forward_backward(cfg)
        clean = model.encoders["video"].backbone[0].weight.grad.clone()
        bal.after_backward(model, out, y, ctx)
        grads.append(model.encoders["video"].backbone[0].weight.grad.clone())
    assert torch.equal(grads[0], grads[1]) and not torch.equal(grads[0], clean)


# ----------------------------------------------------------------------------- MS-Mix


def test_msmix_never_pairs_contradictory_labels():
    """``pairing: anchor`` with the CREMA-D recipe's valence groups: partners share a group (NEU is in both)."""
    names = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    compat = label_groups({"positive": ["NEU", "HAP"], "negative": ["NEU", "SAD", "FEA", "DIS", "ANG"]}, names)
    assert compat[0].all() and compat[1].tolist() == [True, True, False, False, False, False]
    assert compat[2:, 2:].all() and not compat[2:, 1].any()
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        y = torch.randint(0, 6, (16,), generator=gen)
        feats = {"audio": torch.randn(16, 8, generator=gen), "video": torch.randn(16, 8, generator=gen)}
        perm, valid = select_partners(similarity(feats), y, compat, 0.4, gen)
        assert compat[y[valid], y[perm][valid]].all(), "a pair crosses label groups"
        assert (perm[valid] != torch.arange(16)[valid]).all(), "a sample paired with itself"
        alone = torch.tensor([int(compat[y[i], y].sum()) == 1 for i in range(16)])  # its only compatible sample is itself
        assert torch.equal(~valid, alone)
    with pytest.raises(MmvidError, match="groups.bad"):
        label_groups({"bad": ["XYZ"]}, names)


def test_msmix_prefers_pairs_above_tau():
    sim = torch.tensor([[0.0, 0.9, 0.1], [0.9, 0.0, 0.2], [0.1, 0.2, 0.0]])
    perm, valid = select_partners(sim, torch.tensor([0, 0, 0]), None, 0.4, torch.Generator().manual_seed(0))
    assert perm[:2].tolist() == [1, 0] and perm[2] == 1 and valid.all()  # sample 2: fallback to its most similar


def test_msmix_sig_ratios_and_alignment_loss():
    intensity = {"audio": torch.tensor([0.5, -1.0, 2.0, 0.0])}
    perm = torch.tensor([1, 2, 3, 0])
    lams = sig_lambdas(intensity, torch.arange(4), perm, lam0=0.4)["audio"]
    w = torch.tensor([0.25, 0.5, 1.0, 0.0])  # min-max of |I|
    expected = 0.5 * (0.4 + w / (w + w[perm]))
    assert torch.allclose(lams, expected)
    target = torch.tensor([0.1, 0.2, 0.3, 0.4])
    q = F.softmax(intensity["audio"].abs() / 3, 0)
    t = target / target.sum()
    assert float(alignment_loss(intensity, target, "mean_kl")) == pytest.approx(float((t * (t / q).log()).sum()), rel=1e-5)


# ----------------------------------------------------------------------------- G-Blend


def test_gblend_weights_from_given_losses():
    start = {"fused": (1.0, 1.2), "audio": (0.8, 1.1), "video": (1.5, 1.6)}
    end = {"fused": (0.6, 1.0), "audio": (0.3, 1.05), "video": (1.2, 1.4)}
    raw = {}
    for k in start:
        g = start[k][1] - end[k][1]
        o = (end[k][1] - end[k][0]) - (start[k][1] - start[k][0])
        raw[k] = abs(g) / o ** 2
    w = gblend_weights(start, end)
    assert sum(w.values()) == pytest.approx(1.0)
    assert w == {k: pytest.approx(v / sum(raw.values())) for k, v in raw.items()}
    assert w["video"] > w["audio"], "the overfitting audio head (small gain, large overfit) gets the least weight"


# ----------------------------------------------------------------------------- PMR


def test_pmr_prototypes_and_prototype_logits():
    z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    y = torch.tensor([0, 0, 2, 2])
    sums, counts = class_prototypes(z, y, 3)
    assert counts.tolist() == [2, 0, 2]
    protos = (sums / counts.clamp_min(1)[:, None]).float()
    assert protos.tolist() == [[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]]
    logits = prototype_logits(torch.tensor([[2.0, 3.0]]), protos)
    assert torch.allclose(logits, -torch.tensor([[3.0, math.sqrt(13.0), 2.0]]))


def test_pmr_coefficients_boost_only_the_weak_modality():
    c = pmr_coefficients({"audio": 6.0, "video": 2.0}, alpha=0.5, scale="ratio")
    assert c == {"audio": 0.0, "video": pytest.approx(0.5 * (6.0 / 2.0 - 1))}
    assert pmr_coefficients({"audio": 6.0, "video": 2.0}, alpha=0.5)["video"] == 0.5


def test_pmr_epoch_prototypes_are_class_means_of_the_features():
    cfg = make_cfg(AV, balance="pmr", balance_args={"fraction": 1.0})
    model = make_model(cfg)
    batches = [make_batch(AV, 8, seed=s) for s in range(2)]
    bal = BALANCERS.build("pmr", cfg.balance, AV)
    ctx = attach(cfg, model, AUGMENTS.build("none", cfg.augment, AV), bal, batches)
    bal.on_epoch_start(ctx)
    model.eval()
    with torch.no_grad():
        feats = [model.encode(x) for x, _ in batches]
    ys = torch.cat([y for _, y in batches])
    for m in AV:
        z = torch.cat([f[m] for f in feats])
        expected = torch.stack([z[ys == k].mean(0) for k in range(CLASSES)])
        assert torch.allclose(bal.protos[m], expected, atol=1e-5)


# ----------------------------------------------------------------------------- ATF


def test_atf_lr_ratios():
    r = atf_lr_ratios({"audio": 0.5, "video": 1.5}, gamma=1.0)
    assert r == {"audio": pytest.approx(0.5), "video": pytest.approx(1.5)}
    r2 = atf_lr_ratios({"audio": 0.5, "video": 1.5}, gamma=2.0)
    assert r2["audio"] == pytest.approx(0.25) and r2["audio"] < 1 < r2["video"]


def test_atf_sets_encoder_learning_rates_from_unimodal_losses():
    cfg = make_cfg(AV, balance="atf", balance_args={"momentum": 0.0, "gamma": 1.0})
    model = make_model(cfg)
    inputs, y = make_batch(AV, 8)
    bal = BALANCERS.build("atf", cfg.balance, AV)
    ctx = attach(cfg, model, AUGMENTS.build("none", cfg.augment, AV), bal, [(inputs, y)])
    out = model(inputs)
    out.logits.sum().backward()
    with torch.no_grad():
        uni = model.unimodal_logits({m: z.detach() for m, z in out.features.items()})
    losses = {m: float(F.cross_entropy(uni[m], y)) for m in AV}
    mean = sum(losses.values()) / 2
    bal.after_backward(model, out, y, ctx)
    for m in AV:
        group = ctx.optimizer.param_groups[bal.groups[m]]
        assert group["lr"] == pytest.approx(1e-3 * losses[m] / mean)
        assert {id(p) for p in group["params"]} == {id(p) for p in model.encoders[m].parameters()}
    assert not {id(p) for p in ctx.optimizer.param_groups[0]["params"]} & {id(p) for p in model.encoders.parameters()}


# ----------------------------------------------------------------------------- Greedy, UMT


def test_greedy_curation_step_is_set_before_the_forward_and_cleared_after():
    cfg = make_cfg(AV, fusion="mmtm", balance="greedy", balance_args={"epsilon": 0.0, "start_epoch": 0})
    model = make_model(cfg)
    inputs, y = make_batch(AV, 6)
    aug = AUGMENTS.build("none", cfg.augment, AV)
    bal = BALANCERS.build("greedy", cfg.balance, AV)
    ctx = attach(cfg, model, aug, bal, [(inputs, y)])
    bal.on_epoch_start(ctx)
    train_step(model, aug, bal, ctx, inputs, y)
    assert bal.curating and model.fusion.care is None
    assert all(int(b.count) == 1 and b.running_audio.abs().sum() > 0 for b in model.fusion.blocks.values())
    bal.on_batch(inputs, y, ctx)
    care = model.fusion.care
    assert care == AV[bal.caring]
    model.eval()
    with torch.no_grad():
        plain = model(inputs).logits
        model.fusion.care = None
        assert torch.equal(model(inputs).logits, plain), "evaluation never curates"


def test_umt_loss_adds_beta_times_feature_mse(tmp_path):
    teachers = save_teachers(AV, tmp_path)
    cfg = make_cfg(AV, balance="umt", balance_args={"teachers": teachers, "beta": 10.0})
    model = make_model(cfg)
    inputs, y = make_batch(AV, 4)
    bal = BALANCERS.build("umt", cfg.balance, AV)
    ctx = attach(cfg, model, AUGMENTS.build("none", cfg.augment, AV), bal, [(inputs, y)])
    out = model(inputs)
    base = F.cross_entropy(out.logits, y)
    total = bal.loss(base, out, inputs, y, ctx)
    with torch.no_grad():
        mse = sum(F.mse_loss(out.features[m], bal.teachers[m](inputs[m])) for m in AV)
    assert float(total) == pytest.approx(float(base + 10.0 * mse), rel=1e-5)
    assert not any(p.requires_grad for p in bal.teachers.parameters())


def test_target_probability_with_a_mix_uses_the_soft_target():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    mix = Mix("feature", torch.tensor([1, 0]), {"video": 0.25}, 0.25)
    p = logits.softmax(1)
    expected = torch.stack([0.75 * p[0, 0] + 0.25 * p[0, 1], 0.75 * p[1, 1] + 0.25 * p[1, 0]])
    assert torch.allclose(target_probability(logits, y, mix), expected)
