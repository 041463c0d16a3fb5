"""MM and B-MM against the reconstruction of the paper's method in our METHODS notes (../shared/docs/METHODS.md,
"Mixup and MM" and "B-MM — reconstructed"), re-implemented here in test code and compared with mmvid on identical
inputs. There is no public code, and the bodies of the paper's equations are missing from our copy of its text
(../shared/seeds/paper-mixup-multimodal-video.txt), so these tests check mmvid against that reconstruction, not
against the paper's equations themselves. What the reconstruction rests on in the paper's text:

* MM, Sec. 3.2 and Fig. 2: mixup "applied to the multimodal feature representation" (the fused feature) to make
  virtual feature-label pairs, with a Beta-distributed lambda whose parameter "controls the strength of data
  interpolation" (Eq. 3, body lost).
* B-MM, Sec. 3.3 and Fig. 3: after each epoch an imbalance factor over "the entire training set" (Eq. 6) from
  unimodal predictions made by masking the other modality "to zero" (Eq. 5), following OGM-GE's discrepancy
  ratio (Peng et al. 2022); a "hyperparameter that controls the degree of mixup" and a bounded, monotone function
  of the ratio (Eq. 7; the function's name is lost, METHODS.md takes OGM-GE's tanh); mixup applied only to the
  other modality when one performs better (Eq. 8), to its features (Fig. 3) or its input (the Sec. 3.3 text).
  Reconstructed, not in the text: s_m = sum_i p_m,i[y_i], rho = s_a / s_v, lambda_weak = beta tanh(max(rho,
  1 / rho) - 1), and the target mixed by the same lambda_weak.

Convention (METHODS.md, Eq. 8 reconstructed): the weak modality's partner weight is lambda_w,
x~_w,i = (1 - lambda_w) x_w,i + lambda_w x_w,pi(i); the target is mixed by the same lambda_w.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _methods_util import CLASSES, make_batch, make_cfg, make_model

from mmvid.augment.base import modality_mix
from mmvid.config import resolve_config
from mmvid.engine.evaluation import evaluate_model
from mmvid.engine.model import build_model
from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, FUSIONS

load_plugins()
AV = ["audio", "video"]
TOL = 1e-6


def batches(n: int = 3, b: int = 8):
    return [make_batch(AV, b, seed=10 + k) for k in range(n)]


def ctx_for(cfg, seed: int = 0, scores=None, epoch: int = 0):
    return type("Ctx", (), {"cfg": cfg, "train_scores": scores, "val_scores": None, "epoch": epoch,
                            "generator": torch.Generator().manual_seed(seed)})()


# ----------------------------------------------------------------------------- the METHODS.md reconstruction, in test code


def ref_scores(model, data, unimodal: str) -> dict[str, float]:
    """Reconstructed Eq. 5 (mask: the fused model with the other features zeroed) or each modality's own head;
    s_m = sum_i p_m,i[y_i] over the data (reconstructed Eq. 6's statistic)."""
    s = {m: 0.0 for m in AV}
    with torch.no_grad():
        model.eval()
        for inputs, y in data:
            z = {m: model.encoders[m](inputs[m]) for m in AV}
            for m in AV:
                if unimodal == "mask":
                    h = model.fusion({k: z[k] if k == m else torch.zeros_like(z[k]) for k in AV})
                    logits = model.head(h)
                else:
                    lin = model.head.heads[m]
                    logits = z[m] @ lin.weight.T + lin.bias
                p = torch.exp(logits.double() - torch.logsumexp(logits.double(), 1, keepdim=True))
                s[m] += float(p[torch.arange(len(y)), y].sum())
    return s


def ref_lambdas(s: dict[str, float], beta: float, epoch: int, warmup: int) -> tuple[float, dict[str, float]]:
    """Reconstructed Eq. 6 rho = s_a / s_v and Eq. 7 lambda_weak = beta tanh(max(rho, 1/rho) - 1) after the warm-up,
    strong modality 0."""
    rho = s["audio"] / s["video"]
    lam = {m: 0.0 for m in AV}
    if epoch >= warmup:
        weak = "video" if rho > 1 else "audio"
        lam[weak] = beta * math.tanh(max(rho, 1 / rho) - 1)
    return rho, lam


@pytest.mark.parametrize("unimodal,fusion", [("mask", "concat"), ("mask", "bigated"), ("mask", "decision"),
                                             ("head", "decision")])
def test_bmm_rho_and_lambda_schedule_follow_the_methods_reconstruction(unimodal, fusion):
    """Scores from mmvid's own evaluation pass feed B-MM; rho and lambda equal the METHODS.md reconstruction of
    Eqs. 5-7 epoch by epoch, to 1e-6."""
    cfg = make_cfg(AV, fusion=fusion, augment="bmm")
    cfg.model.encoder, cfg.model.width = "small", 4
    cfg.augment.args["unimodal"], cfg.augment.args["warmup"], cfg.augment.args["beta"] = unimodal, 2, 0.7
    torch.manual_seed(0)
    model = build_model(cfg, CLASSES)
    data = batches()
    aug = AUGMENTS.build("bmm", cfg.augment, AV)
    scores = evaluate_model(model, data, torch.device("cpu")).scores()
    ref = ref_scores(model, data, unimodal)
    for m in AV:
        assert scores[m]["score"] == pytest.approx(ref[m], rel=TOL)
    for epoch in range(4):
        aug.on_epoch_start(ctx_for(cfg, scores=scores, epoch=epoch))
        rho, lam = ref_lambdas(ref, 0.7, epoch, warmup=2)
        assert aug.rho == pytest.approx(rho, rel=TOL)
        assert aug.lambdas == {m: pytest.approx(v, abs=TOL) for m, v in lam.items()}
    assert aug.log()["bmm_unimodal_head"] == int(unimodal == "head")


def test_unimodal_head_gives_rho_from_each_heads_softmax_not_from_masking():
    """Decision fusion: with ``head`` s_m = sum_i softmax(W_m z_m + b_m)[y_i]; masking gives
    softmax((W_m z_m + b_m + b_other) / 2), a different rho on the same weights."""
    cfg = make_cfg(AV, fusion="decision", augment="bmm")
    torch.manual_seed(1)
    masked = build_model(cfg, CLASSES)
    with torch.no_grad():  # an untrained head predicts near-uniformly: sharpen it so the two rhos can differ
        for lin in masked.head.heads.values():
            lin.weight.mul_(20)
            lin.bias.normal_(0, 2)
    cfg.augment.args["unimodal"] = "head"
    heads = build_model(cfg, CLASSES)
    heads.load_state_dict(masked.state_dict())  # same weights: the option is not a parameter
    data = batches()
    s_head = evaluate_model(heads, data, torch.device("cpu")).scores()
    s_mask = evaluate_model(masked, data, torch.device("cpu")).scores()
    ref_head, ref_mask = ref_scores(heads, data, "head"), ref_scores(masked, data, "mask")
    rho = {k: s["audio"]["score"] / s["video"]["score"] for k, s in (("head", s_head), ("mask", s_mask))}
    assert rho["head"] == pytest.approx(ref_head["audio"] / ref_head["video"], rel=TOL)
    assert rho["mask"] == pytest.approx(ref_mask["audio"] / ref_mask["video"], rel=TOL)
    assert abs(rho["head"] - rho["mask"]) > 1e-3


def test_unimodal_head_is_refused_where_there_are_no_per_modality_heads():
    # sum (form=logits, OGM-GE's fc_a + fc_v) and mmtm (Greedy's per-modality heads) have one head per modality
    for fusion, args in (("concat", {}), ("sum", {"form": "feature"}), ("film", {}), ("bigated", {})):
        cfg = resolve_config("demo", {"model.fusion": fusion, "model.fusion_args": args, "augment.name": "bmm",
                                      "augment.args.unimodal": "head"})
        with pytest.raises(MmvidError, match="augment.args.unimodal=head needs a fusion with one classifier per modality"):
            build_model(cfg, CLASSES)
    for fusion in ("sum", "mmtm", "decision"):
        cfg = resolve_config("demo", {"model.fusion": fusion, "augment.name": "bmm", "augment.args.unimodal": "head"})
        assert hasattr(build_model(cfg, CLASSES).head, "modality_logits")
    for key, value in (("stage", "input"), ("unimodal", "head")):
        # B-MM's settings are B-MM's own: under another augmentation they are unknown keys, never silently ignored
        cfg = make_cfg(AV, augment="mm", augment_args={key: value})
        with pytest.raises(MmvidError, match=f"augmentation 'mm' has no setting '{key}'"):
            AUGMENTS.build("mm", cfg.augment, AV)
        with pytest.raises(MmvidError, match=f"augment.{key}={value} is a B-MM option"):
            resolve_config("demo", {"augment.name": "mm", f"augment.{key}": value})
    with pytest.raises(MmvidError, match="augment.args.stage"):
        resolve_config("demo", {"augment.args.stage": "fused"})


# ----------------------------------------------------------------------------- B-MM at the input stage


def encoder_inputs(model):
    """Forward pre-hooks recording what each encoder receives: m -> input tensor."""
    seen = {}
    for m in AV:
        model.encoders[m].register_forward_pre_hook(lambda mod, args, m=m: seen.__setitem__(m, args[0].detach().clone()))
    return seen


@pytest.mark.parametrize("scores,weak", [((30.0, 10.0), "video"), ((4.0, 9.0), "audio")])
def test_bmm_input_stage_mixes_only_the_weak_input(scores, weak):
    """``augment.stage: input`` (the Sec. 3.3 text, "each modality's input"): the reconstructed Eq. 8 on the weak
    modality's raw input; the strong input reaches its encoder bit-identical."""
    strong = next(m for m in AV if m != weak)
    cfg = make_cfg(AV, augment="bmm")
    cfg.augment.args["stage"], cfg.augment.args["warmup"], cfg.augment.args["beta"] = "input", 0, 0.8
    aug = AUGMENTS.build("bmm", cfg.augment, AV)
    model = make_model(cfg).eval()
    seen = encoder_inputs(model)
    inputs, y = make_batch(AV, 8, seed=3)
    y = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    before = {m: x.clone() for m, x in inputs.items()}
    ctx = ctx_for(cfg, seed=5, scores={"audio": {"score": scores[0]}, "video": {"score": scores[1]}}, epoch=1)
    aug.on_epoch_start(ctx)
    out, loss = aug.compute(model, inputs, y, ctx)

    # The reconstruction in test code: same permutation (the generator's first draw), same lambda.
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(5))
    r = max(scores[0] / scores[1], scores[1] / scores[0])
    lam = 0.8 * math.tanh(r - 1)
    x_weak = (1 - lam) * before[weak] + lam * before[weak][perm]
    assert torch.equal(seen[strong], before[strong]), "the strong modality's input must pass through unmixed"
    assert torch.allclose(seen[weak], x_weak, atol=1e-6)
    assert all(torch.equal(inputs[m], before[m]) for m in AV), "the caller's batch must not change"
    with torch.no_grad():
        z = {weak: model.encoders[weak](x_weak), strong: model.encoders[strong](before[strong])}
        logits = model.head(model.fusion(z))
    ref_loss = (1 - lam) * F.cross_entropy(logits, y) + lam * F.cross_entropy(logits, y[perm])
    assert torch.allclose(out.logits, logits, atol=1e-5)
    assert float(loss.detach()) == pytest.approx(float(ref_loss), rel=1e-5)
    target = out.mix.soft_target(y, CLASSES)
    assert torch.allclose(target, (1 - lam) * F.one_hot(y, CLASSES) + lam * F.one_hot(y[perm], CLASSES))
    # Per-modality targets (balancers): the weak prediction saw a mixed input, the strong one did not.
    assert modality_mix(out.mix, strong) is None and modality_mix(out.mix, weak).target_weight == pytest.approx(lam)
    assert out.mix.stage == "input" and aug.log()["bmm_stage_input"] == 1


def test_bmm_feature_stage_is_the_default_and_differs_from_the_input_stage():
    cfg = make_cfg(AV, augment="bmm")
    default = AUGMENTS.build("bmm", cfg.augment, AV).settings
    assert default.stage == "feature" and default.unimodal == "mask"
    cfg.augment.args["warmup"] = 0
    model = make_model(cfg).eval()
    inputs, y = make_batch(AV, 8, seed=4)
    sc = {"audio": {"score": 30.0}, "video": {"score": 10.0}}
    outs = {}
    for stage in ("feature", "input"):
        cfg.augment.args["stage"] = stage
        aug = AUGMENTS.build("bmm", cfg.augment, AV)
        ctx = ctx_for(cfg, seed=2, scores=sc, epoch=1)
        aug.on_epoch_start(ctx)
        outs[stage] = aug.compute(model, inputs, y, ctx)[0]
    assert torch.equal(outs["feature"].features["audio"], outs["input"].features["audio"])
    assert not torch.allclose(outs["feature"].features["video"], outs["input"].features["video"])


# ----------------------------------------------------------------------------- MM (reconstructed Eq. 3) on every fusion


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_mm_mixes_the_fused_feature_on_every_fusion(fusion):
    """METHODS.md's MM (Sec. 3.2, Fig. 2: mixup of the fused feature): h~ = lambda h_i + (1 - lambda) h_pi(i) before
    the head; loss = lambda CE(., y_i) + (1 - lambda) CE(., y_pi(i))."""
    cfg = make_cfg(AV, fusion=fusion, augment="mm")
    cfg.augment.args["alpha"] = 0.4
    aug = AUGMENTS.build("mm", cfg.augment, AV)
    model = make_model(cfg).eval()
    inputs, y = make_batch(AV, 8, seed=6)
    ctx = ctx_for(cfg, seed=9)
    out, loss = aug.compute(model, inputs, y, ctx)
    lam, perm = 1 - out.mix.target_weight, out.mix.perm
    assert sorted(perm.tolist()) == list(range(8))
    with torch.no_grad():
        h = model.fusion(model.encode(inputs))  # model.encode: MMTM runs its blocks between encoder stages
        logits = model.head(lam * h + (1 - lam) * h[perm])
    assert torch.allclose(out.logits, logits, atol=1e-5)
    ref = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-5)


def test_mm_lambda_is_beta_distributed():
    """lambda ~ Beta(alpha, alpha): mean 1/2, variance 1 / (4 (2 alpha + 1)); 4000 draws, 5-sigma tolerances."""
    cfg = make_cfg(AV, augment="mm")
    cfg.augment.args["alpha"] = 0.4
    aug = AUGMENTS.build("mm", cfg.augment, AV)
    ctx = ctx_for(cfg, seed=11)
    lams = torch.tensor([1 - aug.sample(torch.arange(2), ctx).target_weight for _ in range(4000)], dtype=torch.float64)
    var = 1 / (4 * (2 * 0.4 + 1))
    assert float(lams.mean()) == pytest.approx(0.5, abs=5 * math.sqrt(var / 4000))
    assert float(lams.var()) == pytest.approx(var, abs=0.012)
