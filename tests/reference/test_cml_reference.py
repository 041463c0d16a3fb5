"""CML against its two references, re-implemented below from reading them:

- the authors' QingyangZhang/CML ``miwae/train.py`` (HEAD 85075b5), stage 2: for each sample a random order
  in which its views go missing (``get_multi_mask``: input j has the first j views of that order masked),
  ``cls_loss`` = the mean over the M inputs of CE, and for each consecutive pair (j, j + 1)
  ``rank_loss += ReLU((conf_{j+1} - conf_j) * sign - eps).sum()`` with sign = (pred_j == target) ("trick 1")
  plus ``ReLU((conf_{j+1} - conf_j.detach()) * sign1 - eps).sum()`` with sign1 = both predictions wrong
  ("trick 2"); loss = cls_loss + rank_loss * beta / 100. The authors impute a missing view with the data
  mean and re-run their MIWAE; here a missing modality's feature columns of the concat input are zeroed
  (mmvid's adaptation, the same removal as BalanceBenchmark's below).
- GeWu-Lab/BalanceBenchmark ``balancemm/trainer/CML_trainer.py`` (HEAD 4c1482f, ``training_step``,
  ``conf_loss``) on ``models/avclassify_model.py`` (``unimodality_calculate`` with the concat head): the
  modality list is shuffled once per epoch; out_s = W [z] + b, then M - 1 times: r = list.pop(),
  out_p = out_s - (W_r z_r + b/M) + b/M, conf = max softmax, loss += CE(out_p), reg += max(0, sum(conf_p -
  conf_s)), out_s = out_p; loss = (CE(out) + sum CE(out_p)) / M + lam * reg.

mmvid's balancer is run on the same weights and batch; the removal orders it drew are handed to the
reference, and the loss and every parameter's gradient are compared (two and three modalities).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _methods_util import attach, make_batch, make_cfg, make_model

from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]
AVF = ["audio", "video", "flow"]


# ----------------------------------------------------------------------------- the references, re-implemented


def ref_balancebenchmark(model, inputs, label, shuffled: list[str], lam: float):
    """training_step of CML_trainer (concat head), ``shuffled`` = its random_dict after random.shuffle;
    returns (loss, [each pair's hinge value])."""
    feats = {m: model.encoders[m](inputs[m]) for m in model.modalities}
    w, b, n = model.head.weight, model.head.bias, len(model.modalities)
    output = F.linear(torch.cat([feats[m] for m in model.modalities], 1), w, b)
    unimodal, at = {}, 0
    for m in model.modalities:
        d = feats[m].shape[1]
        unimodal[m] = torch.mm(feats[m], torch.transpose(w[:, at:at + d], 0, 1)) + b / n
        at += d
    out_s, reg, hinges, random_dict = output, 0, [], list(shuffled)
    for i in range(n - 1):
        removed = random_dict.pop()
        out_p = out_s - unimodal[removed] + b / n
        conf_s, _ = torch.max(torch.softmax(out_s, 1), 1)
        conf_p, _ = torch.max(torch.softmax(out_p, 1), 1)
        if i == 0:
            loss = F.cross_entropy(out_s, label)
        loss = loss + F.cross_entropy(out_p, label)
        hinge = max(0, torch.sub(conf_p, conf_s).sum())  # conf_loss: Python max on the batch sum
        hinges.append(float(hinge.detach()) if torch.is_tensor(hinge) else 0.0)
        reg = reg + hinge
        out_s = out_p
    return loss / n + lam * reg, hinges


def ref_authors(model, inputs, target, orders: torch.Tensor, beta: float, eps: float):
    """Stage 2 of miwae/train.py on the concat head, views missing per sample in ``orders`` (B, M); returns
    (loss, number of samples that the trick-1 and trick-2 terms act on)."""
    feats = torch.cat([model.encoders[m](inputs[m]) for m in model.modalities], 1)
    sizes = [model.encoders[m].output_dim for m in model.modalities]
    n, p = feats.shape
    mask = torch.ones(n, p, dtype=torch.bool)
    mask_list = [mask.clone()]
    for num in range(len(sizes) - 1):  # get_multi_mask, with the drawn orders as miss_order
        for i in range(n):
            v = int(orders[i, num])
            mask[i, sum(sizes[:v]):sum(sizes[:v + 1])] = False
        mask_list.append(mask.clone())
    cls_loss, confidence_list, predict_list = 0, [], []
    for num in range(len(sizes)):
        logits = model.head(torch.where(mask_list[num], feats, torch.zeros_like(feats)))
        cls_loss += F.cross_entropy(logits, target)
        probability = F.softmax(logits, 1)
        _, predict = torch.max(probability, 1)
        confidence_list.append(torch.max(probability, axis=1)[0])
        predict_list.append(predict)
    cls_loss /= len(sizes)
    rank_loss, acting = 0, [0, 0]
    for num in range(len(sizes) - 1):
        sign = (~(predict_list[num] != target)).long()  # trick 1
        rank_loss += torch.nn.ReLU()(torch.sub(confidence_list[num + 1], confidence_list[num]) * sign - eps).sum()
        sign1 = (predict_list[num + 1] != target) & (predict_list[num] != target)  # trick 2
        conf1, conf2 = confidence_list[num + 1].clone(), confidence_list[num].clone().detach()
        rank_loss += torch.nn.ReLU()(torch.sub(conf1, conf2) * sign1 - eps).sum()
        acting[0] += int((sign.bool() & (confidence_list[num + 1] > confidence_list[num] + eps)).sum())
        acting[1] += int((sign1 & (conf1 > conf2 + eps)).sum())
    return cls_loss + rank_loss * beta / 100, acting


# ----------------------------------------------------------------------------- set-up


def make(mods, seed, **args):
    cfg = make_cfg(mods, balance="cml", balance_args=args)
    model = make_model(cfg)
    with torch.no_grad():  # a sharper head: confident, often wrong predictions, so every branch is reached
        model.head.weight.mul_(8)
    inputs, y = make_batch(mods, 12, seed=seed)
    bal = BALANCERS.build("cml", cfg.balance, mods)
    bal.check(cfg.model, "none")
    aug = AUGMENTS.build("none", cfg.augment, mods)
    ctx = attach(cfg, model, aug, bal, [(inputs, y)])
    cfg.seed = seed
    bal.setup(model, ctx)
    bal.on_epoch_start(ctx)
    return model, inputs, y, bal, aug, ctx


def mmvid_loss_and_grads(model, inputs, y, bal, aug, ctx):
    model.train()
    out, base = aug.compute(model, inputs, y, ctx)
    loss = bal.loss(base, out, inputs, y, ctx)
    params = [p for p in model.parameters() if p.requires_grad]
    return loss, torch.autograd.grad(loss, params, allow_unused=True)


def ref_grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


def assert_same_grads(mine, theirs, names):
    for name, a, b in zip(names, mine, theirs):
        if a is None or b is None:
            assert a is None and b is None or float((a if a is not None else b).abs().sum()) == 0, name
            continue
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("mods", [AV, AVF], ids=["2mod", "3mod"])
def test_balancebenchmark_form_matches_conf_loss_and_chain(mods):
    """penalty=batch, order=epoch: loss 1e-6, gradients rtol 1e-5 / atol 1e-6, over seeds reaching both hinge branches."""
    seen = set()
    for seed in range(6):
        model, inputs, y, bal, aug, ctx = make(mods, seed, penalty="batch", order="epoch", lam=0.1)
        if seed % 2:  # a strong class prior: with a modality removed it dominates, and confidence rises
            with torch.no_grad():
                model.head.bias[0] = 6.0
        loss, grads = mmvid_loss_and_grads(model, inputs, y, bal, aug, ctx)
        removal = [mods[k] for k in bal.removal_order]
        assert sorted(removal) == sorted(mods)
        ref, hinges = ref_balancebenchmark(model, inputs, y, list(reversed(removal)), lam=0.1)
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert_same_grads(grads, ref_grads(model, ref), names)
        seen.update(h > 0 for h in hinges)
    assert seen == {True, False}, "the seeds must reach both the active and the inactive hinge"


@pytest.mark.parametrize("eps", [0.0, 0.05])
@pytest.mark.parametrize("mods", [AV, AVF], ids=["2mod", "3mod"])
def test_authors_form_matches_rank_loss(mods, eps):
    """penalty=sample, order=sample (defaults): loss 1e-6, gradients rtol 1e-5 / atol 1e-6; both tricks act."""
    acting = [0, 0]
    for seed in range(4):
        model, inputs, y, bal, aug, ctx = make(mods, seed, lam=0.1, eps=eps)
        loss, grads = mmvid_loss_and_grads(model, inputs, y, bal, aug, ctx)
        orders = bal.orders
        assert orders.shape == (12, len(mods)) and all(sorted(r) == list(range(len(mods))) for r in orders.tolist())
        ref, act = ref_authors(model, inputs, y, orders, beta=10, eps=eps)
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert_same_grads(grads, ref_grads(model, ref), names)
        acting = [a + b for a, b in zip(acting, act)]
    assert acting[0] > 0 and acting[1] > 0, f"both ranking terms must act on some sample (got {acting})"


def test_orders_per_sample_vary_and_epoch_order_is_shared():
    model, inputs, y, bal, aug, ctx = make(AVF, 0)
    mmvid_loss_and_grads(model, inputs, y, bal, aug, ctx)
    assert len({tuple(r) for r in bal.orders.tolist()}) > 1, "per-sample orders must differ between samples"
    model, inputs, y, bal, aug, ctx = make(AVF, 0, order="epoch")
    mmvid_loss_and_grads(model, inputs, y, bal, aug, ctx)
    assert {tuple(r) for r in bal.orders.tolist()} == {tuple(bal.removal_order)}
    # Every rank draws the same epoch order (same seed), so under DDP they remove the same modality.
    other = BALANCERS.build("cml", make_cfg(AVF, balance="cml", balance_args={"order": "epoch"}).balance, AVF)
    ctx.rank = 1
    other.setup(model, ctx)
    other.on_epoch_start(ctx)
    assert other.removal_order == bal.removal_order


def test_outside_the_window_the_loss_is_the_augmentations():
    model, inputs, y, bal, aug, ctx = make(AV, 0, start=2, end=3)
    out, base = aug.compute(model, inputs, y, ctx)
    assert bal.loss(base, out, inputs, y, ctx) is base  # epoch 0 < start
    ctx.epoch = 2
    assert bal.loss(base, out, inputs, y, ctx) is not base
    ctx.epoch = 4
    assert bal.loss(base, out, inputs, y, ctx) is base


def test_state_round_trip_resumes_the_same_draws():
    model, inputs, y, bal, aug, ctx = make(AVF, 1)
    state = bal.state_dict()
    first = bal.draw_orders(12)
    again = BALANCERS.build("cml", bal.cfg, AVF)
    again.setup(model, ctx)
    again.load_state_dict(state)
    assert torch.equal(again.draw_orders(12), first)


@pytest.mark.parametrize("args,match", [({"penalty": "mean"}, "balance.args.penalty"),
                                        ({"order": "batch"}, "balance.args.order"),
                                        ({"lam": -1}, r"balance.args.lam=-1 is not valid for balancer 'cml'; it must be a finite number in \[0, ")])
def test_bad_options_are_one_line(args, match):
    with pytest.raises(MmvidError, match=match):
        BALANCERS.build("cml", make_cfg(AV, balance="cml", balance_args=args).balance, AV)
