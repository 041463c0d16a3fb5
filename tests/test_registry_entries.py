"""Every registered fusion, augmentation and balancer, through its registry: output shapes, finite values,
a gradient on every trainable parameter; and every AUGMENT x BALANCER pair either trains or is refused
with a clear MmvidError."""

from __future__ import annotations

import pytest
import torch
from _methods_util import CLASSES, WIDTH, attach, make_batch, make_cfg, make_model, save_teachers, train_step

from mmvid.errors import MmvidError
from mmvid.models.calibration import PreFusionCalibration
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS, FUSIONS

load_plugins()
AV = ["audio", "video"]
AVF = ["audio", "video", "flow"]
D = 8 * WIDTH


def assert_all_grads(params, what: str) -> None:
    missing = [n for n, p in params if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all()
                                                             or p.grad.abs().sum() == 0)]
    assert not missing, f"{what}: no (finite, non-zero) gradient for {missing}"


@pytest.mark.parametrize("mods", [AV, AVF], ids=["2mod", "3mod"])
@pytest.mark.parametrize("name", FUSIONS.names())
def test_fusion_entry(name, mods):
    torch.manual_seed(0)
    fusion = FUSIONS.build(name, {m: D for m in mods})
    head = fusion.make_head(CLASSES)
    feats = {m: torch.randn(6, D, requires_grad=True) for m in mods}
    h = fusion(feats)
    assert h.shape == (6, fusion.output_dim)
    logits = head(h)
    assert logits.shape == (6, CLASSES) and torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    # MMTM's blocks act between encoder stages (through the classifier: tests/reference/test_greedy_reference.py).
    params = [(n, p) for n, p in fusion.named_parameters() if not n.startswith("blocks.")]
    assert_all_grads(params + list(head.named_parameters()), name)
    assert all(feats[m].grad.abs().sum() > 0 for m in mods), "every modality must reach the logits"


@pytest.mark.parametrize("name", FUSIONS.names())
def test_fusion_in_classifier_with_unimodal_logits(name):
    cfg = make_cfg(AV, fusion=name)
    model = make_model(cfg)
    inputs, y = make_batch(AV, 5)
    out = model(inputs)
    assert out.logits.shape == (5, CLASSES) and out.fused.shape == (5, model.fusion.output_dim)
    uni = model.unimodal_logits(out.features)
    assert set(uni) == set(AV) and all(v.shape == (5, CLASSES) and torch.isfinite(v).all() for v in uni.values())


def test_fusions_refuse_what_they_cannot_do():
    with pytest.raises(MmvidError, match="equal feature sizes"):
        FUSIONS.build("sum", {"audio": 32, "video": 64})
    with pytest.raises(MmvidError, match="at least two modalities"):
        FUSIONS.build("film", {"audio": 32})
    with pytest.raises(MmvidError, match="condition"):
        FUSIONS.build("film", {"audio": 32, "video": 32}, condition="flow")


def test_calibration_identity_at_init_then_every_parameter_learns():
    torch.manual_seed(0)
    cal = PreFusionCalibration({m: D for m in AVF})
    feats = {m: torch.randn(6, D) for m in AVF}
    out, extras = cal(feats)
    assert all(torch.equal(out[m], feats[m]) for m in AVF), "identity at initialisation"
    assert all(extras[f"gate_{m}"].shape == (6, 1) for m in AVF)
    opt = torch.optim.SGD(cal.parameters(), lr=0.1)
    for _ in range(2):  # the zero-initialised layer blocks gradients upstream only at the very first step
        opt.zero_grad()
        out, _ = cal(feats)
        sum(o.pow(3).sum() for o in out.values()).backward()
        opt.step()
    assert_all_grads(list(cal.named_parameters()), "calibration")


def test_calibrate_flag_builds_the_module_without_changing_the_head():
    cfg = make_cfg(AV)
    plain = make_model(cfg)
    cfg.model.calibrate = True
    cal = make_model(cfg)
    assert cal.calibration is not None and type(cal.head) is type(plain.head)
    inputs, _ = make_batch(AV, 4)
    cal.eval()
    out = cal(inputs)
    assert {"gate_audio", "gate_video"} <= set(out.extras)


@pytest.mark.parametrize("name", AUGMENTS.names())
def test_augment_entry(name):
    cfg = make_cfg(AV, augment=name)
    if name == "bmm":
        cfg.augment.args["warmup"] = 0
    model = make_model(cfg)
    inputs, y = make_batch(AV, 8)
    aug = AUGMENTS.build(name, cfg.augment, AV)
    bal = BALANCERS.build("none", cfg.balance, AV)
    ctx = attach(cfg, model, aug, bal, [(inputs, y)])
    ctx.epoch = 1
    ctx.train_scores = {"audio": {"score": 6.0, "correct": 6.0, "n": 8.0}, "video": {"score": 2.0, "correct": 2.0, "n": 8.0}}
    aug.on_epoch_start(ctx)
    out, loss = aug.compute(model, inputs, y, ctx)
    assert out.logits.shape == (8, CLASSES) and loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    params = list(model.named_parameters()) + [(f"augment.{n}", p) for g in ctx.optimizer.param_groups[1:] for n, p in
                                               enumerate(g["params"])]
    assert_all_grads(params, name)
    assert all(v is None or isinstance(v, (int, float)) for v in aug.log().values())


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return save_teachers(AVF, tmp_path_factory.mktemp("teachers"))


def balancer_setup(name, mods, teachers, augment="none"):
    fusion = {"greedy": "mmtm", "mla": "shared", "reconboost": "shared"}.get(name, "concat")
    args = {"teachers": {m: teachers[m] for m in mods}} if name == "umt" else {}
    cfg = make_cfg(mods, fusion=fusion, augment=augment, balance=name, balance_args=args)
    if name == "reconboost":
        cfg.model.fusion_args = {"combine": "boost"}
    return cfg


@pytest.mark.parametrize("name", BALANCERS.names())
def test_balancer_entry(name, teachers):
    cfg = balancer_setup(name, AV, teachers)
    model = make_model(cfg)
    batches = [make_batch(AV, 8, seed=s) for s in range(2)]
    aug = AUGMENTS.build("none", cfg.augment, AV)
    bal = BALANCERS.build(name, cfg.balance, AV)
    bal.check(cfg.model, "none")
    ctx = attach(cfg, model, aug, bal, batches)
    # ReconBoost trains one encoder per phase-1 epoch: take a global-rectification epoch after both joined.
    ctx.epoch = 12 if name == "reconboost" else 0
    bal.on_epoch_start(ctx)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for inputs, y in batches:
        out, loss = train_step(model, aug, bal, ctx, inputs, y)
        assert torch.isfinite(loss) and out.logits.shape == (8, CLASSES)
    params = list(model.named_parameters())
    params += [(f"extra.{i}", p) for g in ctx.optimizer.param_groups[1:] for i, p in enumerate(g["params"])]
    if len(bal.passes(ctx)) > 1:  # each pass trains part of the model (MLA: one encoder): every weight moved
        assert not [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])], name
    else:
        assert_all_grads(params, name)
    bal.on_epoch_end(ctx)
    log = bal.log()
    assert all(isinstance(v, float) for v in log.values()), log
    assert name == "none" or log, f"{name} logs no per-epoch coefficient"


@pytest.mark.parametrize("balance", BALANCERS.names())
@pytest.mark.parametrize("augment", AUGMENTS.names())
def test_every_augment_balancer_pair_trains_or_is_refused(augment, balance, teachers):
    mods = AV
    cfg = balancer_setup(balance, mods, teachers, augment)
    if augment == "bmm":
        cfg.augment.args["warmup"] = 0
    bal = BALANCERS.build(balance, cfg.balance, mods)
    bal.check(cfg.model, augment)  # the pairs we register all work; a refusal would raise MmvidError here
    model = make_model(cfg)
    batches = [make_batch(mods, 6, seed=1)]
    aug = AUGMENTS.build(augment, cfg.augment, mods)
    ctx = attach(cfg, model, aug, bal, batches)
    ctx.epoch = 1
    ctx.train_scores = {"audio": {"score": 5.0, "correct": 5.0, "n": 6.0}, "video": {"score": 1.0, "correct": 1.0, "n": 6.0}}
    aug.on_epoch_start(ctx)
    bal.on_epoch_start(ctx)
    _, loss = train_step(model, aug, bal, ctx, *batches[0])
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", ["ogm-ge", "pmr", "atf", "greedy"])
def test_balancers_refuse_a_single_modality(name):
    cfg = make_cfg(["audio"], fusion="mmtm" if name == "greedy" else "concat", balance=name)
    with pytest.raises(MmvidError, match="modalit"):
        BALANCERS.build(name, cfg.balance, ["audio"]).check(cfg.model, "none")


def test_greedy_refuses_other_fusions():
    cfg = make_cfg(AV, balance="greedy")
    with pytest.raises(MmvidError, match="--fusion mmtm"):
        BALANCERS.build("greedy", cfg.balance, AV).check(cfg.model, "none")


@pytest.mark.parametrize("name", ["ogm-ge", "pmr", "atf", "gblend", "umt"])
def test_balancers_with_three_modalities(name, teachers):
    cfg = balancer_setup(name, AVF, teachers)
    model = make_model(cfg)
    batches = [make_batch(AVF, 6)]
    aug = AUGMENTS.build("none", cfg.augment, AVF)
    bal = BALANCERS.build(name, cfg.balance, AVF)
    bal.check(cfg.model, "none")
    ctx = attach(cfg, model, aug, bal, batches)
    bal.on_epoch_start(ctx)
    _, loss = train_step(model, aug, bal, ctx, *batches[0])
    assert torch.isfinite(loss)
