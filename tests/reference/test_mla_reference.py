"""MLA against its references, re-implemented below from reading them:

* Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation ``main.py`` (``train_epoch`` with
  ``--gs_flag``: one forward, then per modality CE(fc_out(z_m)) -> backward -> ``gs_plugin.before_update``
  -> ``optimizer.step()`` -> ``optimizer.zero_grad()`` (torch 1.8.1: zeroes, does not drop), ``del p.grad``
  after the batch; ``valid`` with ``--dynamic``: ``calculate_gating_weights``) and ``utils/utils.py``
  ``GSPlugin`` (4735bbc: ``grad = grad P^T``; 11ae1ee: its name test never matches, no projection);
* GeWu-Lab/BalanceBenchmark ``balancemm/trainer/MLA_trainer.py`` (``grad += grad P^T``) and
  ``balancemm/models/avclassify_model.py`` ``BaseClassifierMLAModel`` (per-sample entropy weights).

mmvid's balancer runs with its *default* arguments for the authors' variant: the defaults are theirs.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _methods_util import make_batch, make_cfg, make_ctx, make_model, train_step

from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]
AVF = ["audio", "video", "flow"]
BATCH, N_BATCHES, LR = 6, 3, 0.05


# ----------------------------------------------------------------------------- the reference, re-implemented


class RefGSPlugin:
    """GSPlugin: Pl = I (d, d); before_update on fc_out's weight unless it is the very first pass."""

    def __init__(self, d: int, variant: str) -> None:
        self.Pl = torch.eye(d)
        self.exp_count = 0
        self.variant = variant  # "authors" (4735bbc), "bb" (BalanceBenchmark), "head" (11ae1ee)

    def before_update(self, fc: torch.nn.Linear, x: torch.Tensor, batch_index: int, len_dataloader: int) -> None:
        lamda = batch_index / len_dataloader + 1
        alpha = 1.0 * 0.1 ** lamda
        if self.exp_count == 0:
            return
        for n, w in fc.named_parameters():
            wanted = "module.weight" if self.variant == "head" else "weight"
            if n != wanted:
                continue
            r = torch.mean(x.detach(), 0, True)
            k = torch.mm(self.Pl, torch.t(r))
            self.Pl = torch.sub(self.Pl, torch.mm(k, torch.t(k)) / (alpha + torch.mm(k, r)))
            self.Pl = self.Pl / torch.norm(self.Pl, p="fro")
            if self.variant == "bb":
                w.grad.add_(torch.mm(w.grad, torch.t(self.Pl)))
            else:
                w.grad = torch.mm(w.grad, torch.t(self.Pl))


def ref_batch(model, opt, gs, inputs, label, batch_step, len_dataloader, zero_keeps: bool):
    """One batch of train_epoch's gs branch; ``zero_keeps``: torch 1.8's zero_grad (zeros, not None)."""
    feats = {m: model.encoders[m](inputs[m]) for m in model.modalities}
    fc = model.head.linear
    losses = []
    for m in model.modalities:
        loss = F.cross_entropy(fc(feats[m]), label)
        loss.backward()
        gs.before_update(fc, feats[m], batch_step, len_dataloader)
        opt.step()
        for p in model.parameters():  # optimizer.zero_grad()
            if p.grad is not None:
                if zero_keeps:
                    p.grad.zero_()
                else:
                    p.grad = None
        gs.exp_count += 1
        losses.append(float(loss.detach()))
    for p in model.parameters():  # del p.grad
        p.grad = None
    return losses


def ref_entropy(output: torch.Tensor) -> torch.Tensor:
    p = F.softmax(output, dim=0)
    return -torch.sum(p * torch.log(p))


def ref_gating(outs: list[torch.Tensor]) -> list[torch.Tensor]:
    ent = [ref_entropy(o) for o in outs]
    top = max(ent)
    w = [torch.exp(top - e) for e in ent]
    total = sum(w)
    return [x / total for x in w]


def ref_gating_per_sample(outs: list[torch.Tensor]) -> list[torch.Tensor]:
    ent = []
    for o in outs:
        p = F.softmax(o, dim=1)
        ent.append(-torch.sum(p * torch.log(p), dim=1, keepdim=True))
    top = ent[0]
    for e in ent[1:]:
        top = torch.max(top, e)
    w = [torch.exp(top - e) for e in ent]
    total = sum(w)
    return [x / total for x in w]


# ----------------------------------------------------------------------------- mmvid


def mmvid_parts(mods, args=None, fusion_args=None):
    cfg = make_cfg(mods, fusion="shared", balance="mla", balance_args=args)
    cfg.model.fusion_args = dict(fusion_args or {})
    cfg.data.batch_size = BATCH
    model = make_model(cfg)
    bal = BALANCERS.build("mla", cfg.balance, mods)
    bal.check(cfg.model, "none")
    return cfg, model, bal


def sgd(params):
    return torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=1e-4)  # the reference's optimizer


@pytest.mark.parametrize("args,variant,zero_keeps", [
    ({}, "authors", True),
    ({"projection": "add"}, "bb", True),
    ({"projection": "off"}, "head", True),
    ({"idle": "skip"}, "authors", False),
], ids=["defaults=authors", "balancebenchmark", "authors-last-commit", "torch2-zero-grad"])
@pytest.mark.parametrize("mods", [AV, AVF], ids=["2mod", "3mod"])
def test_alternating_passes_match_the_reference(args, variant, zero_keeps, mods):
    batches = [make_batch(mods, BATCH, seed=s) for s in range(N_BATCHES)]
    cfg, model, bal = mmvid_parts(mods, args)
    ref = copy.deepcopy(model)
    ctx = make_ctx(cfg, model, sgd(model.parameters()), batches)
    bal.setup(model, ctx)
    ref_opt, gs = sgd(ref.parameters()), RefGSPlugin(model.head.linear.in_features, variant)
    model.train(), ref.train()
    for epoch in range(2):  # the projector and exp_count carry over; the batch index restarts
        ctx.epoch = epoch
        bal.on_epoch_start(ctx)
        for step, (inputs, y) in enumerate(batches):
            _, loss = train_step(model, AUGMENTS.build("none", cfg.augment, mods), bal, ctx, inputs, y)
            ref_losses = ref_batch(ref, ref_opt, gs, inputs, y, step, N_BATCHES, zero_keeps)
            assert float(loss) == pytest.approx(sum(ref_losses) / len(ref_losses), rel=1e-5)
            for (n, p), q in zip(model.named_parameters(), ref.parameters()):
                torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda s: f"{n} epoch {epoch} step {step}: {s}")
            for (n, b), c in zip(model.named_buffers(), ref.buffers()):
                torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=lambda s: f"buffer {n}: {s}")
    if variant != "head":
        torch.testing.assert_close(bal.P, gs.Pl, rtol=1e-5, atol=1e-7)
    assert bal.count == gs.exp_count == 2 * N_BATCHES * len(mods)
    assert set(bal.log()) == {f"mla_loss_{m}" for m in mods}


def test_projection_changes_the_head_step():
    """The defaults differ from no projection at all (the test above is not blind to it)."""
    mods = AV
    batches = [make_batch(mods, BATCH, seed=s) for s in range(2)]
    heads = []
    for args in ({}, {"projection": "off"}):
        cfg, model, bal = mmvid_parts(mods, args)
        ctx = make_ctx(cfg, model, sgd(model.parameters()), batches)
        bal.setup(model, ctx)
        bal.on_epoch_start(ctx)
        for inputs, y in batches:
            train_step(model, AUGMENTS.build("none", cfg.augment, mods), bal, ctx, inputs, y)
        heads.append(model.head.linear.weight.detach().clone())
    assert not torch.allclose(heads[0], heads[1], atol=1e-4)


@pytest.mark.parametrize("mods", [AV, AVF], ids=["2mod", "3mod"])
@pytest.mark.parametrize("fusion_args,ref", [
    ({}, "authors"),
    ({"entropy": "sample"}, "bb"),
    ({"combine": "fixed"}, "fixed"),
], ids=["dynamic=authors", "per-sample=balancebenchmark", "fixed"])
def test_test_time_fusion_matches_the_reference(fusion_args, ref, mods):
    _, model, _ = mmvid_parts(mods, fusion_args=fusion_args)
    model.eval()
    inputs, _ = make_batch(mods, 7, seed=3)
    with torch.no_grad():
        out = model(inputs)
        uni = [model.head.linear(out.features[m]) for m in mods]
        if ref == "authors":
            w = ref_gating(uni)
        elif ref == "bb":
            w = ref_gating_per_sample(uni)
        else:  # the authors' valid() without --dynamic: av_alpha 0.5 (1/M here for any M)
            w = [1 / len(mods)] * len(mods)
        expected = sum(wi * o for wi, o in zip(w, uni))
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-6)
    # The per-modality predictions of valid() (argmax of fc_out(z_m)), through augment.unimodal=head.
    model.unimodal = "head"
    got = model.unimodal_logits(out.features)
    for m, o in zip(mods, uni):
        torch.testing.assert_close(got[m], o)


def test_mla_refuses_what_it_cannot_do():
    cfg = make_cfg(AV, fusion="concat", balance="mla")
    with pytest.raises(MmvidError, match="--fusion shared"):
        BALANCERS.build("mla", cfg.balance, AV).check(cfg.model, "none")
    cfg = make_cfg(AV, fusion="shared", balance="mla", balance_args={"projection": "orthogonal"})
    with pytest.raises(MmvidError, match="balance.args.projection"):
        BALANCERS.build("mla", cfg.balance, AV)
    cfg, model, bal = mmvid_parts(AV)
    ctx = make_ctx(cfg, model, sgd(model.parameters()), [make_batch(AV, BATCH)])
    ctx.world_size = 2
    with pytest.raises(MmvidError, match="one process"):
        bal.setup(model, ctx)
