"""Data Remixing against its reference, MatthewMaxy/Remix_ICML2025 (commit 6ff72b9), re-implemented below from
reading ``train.py`` and ``models/models.py``: ``kl_divergence`` (numpy, clip to [1e-9, 1], log2 of p over the
uniform 1/C), ``remix`` (eval mode, no gradient, the un-augmented loader over the whole training set; a sample
goes to the audio subset if KL_a < KL_v, else to the video subset), ``train_epoch`` (warm-up: CE(out) + 0.5
CE(out_audio) + 0.5 CE(out_video)) and ``special_train_epoch`` (the video subset's batches, then the audio
subset's; ``AVClassifier.forward(mode)`` zeroes the other modality's pooled feature in place before the concat
head; loss CE(out) + gamma CE(out_m)), with Adam(betas 0.9/0.999, eps 1e-8, weight decay 1e-4) as its optimizer.

mmvid's balancer runs with its *default* arguments: the defaults are the reference's.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _methods_util import CLASSES, attach, make_batch, make_cfg, make_model, train_step

from mmvid.balance.remix import assign_modalities, kl_to_uniform
from mmvid.distributed.collectives import shard_order
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]
N, BATCH = 24, 4
TOL = dict(rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the reference, re-implemented


def ref_kl_divergence(pred: np.ndarray, num_classes: int) -> float:
    uniform = np.full(num_classes, 1.0 / num_classes)
    pred = np.clip(pred, 1e-9, 1.0)
    return float(np.sum(pred * np.log2(pred / uniform)))


class RefModel(torch.nn.Module):
    """AVClassifier: two encoders, the concat head on [a; v] and a linear head per modality; ``mode`` zeroes
    the other modality's feature in place (its encoder then gets a zero gradient, not none)."""

    def __init__(self, model, heads):
        super().__init__()
        self.audio_net, self.visual_net = model.encoders["audio"], model.encoders["video"]
        self.head, self.head_audio, self.head_video = model.head, heads["audio"], heads["video"]

    def forward(self, audio, visual, mode=None):
        a, v = self.audio_net(audio), self.visual_net(visual)
        if mode == "video":
            a[:, :] = 0.0
        elif mode == "audio":
            v[:, :] = 0.0
        out = self.head(torch.cat((a, v), 1))
        return out, self.head_audio(a), self.head_video(v)


def ref_remix(ref: RefModel, data, labels) -> tuple[list[int], list[int]]:
    """remix(): (audio subset, video subset) as lists of training rows, from the un-augmented loader."""
    audio_rows, video_rows = [], []
    with torch.no_grad():
        ref.eval()
        for start in range(0, N, BATCH):
            rows = list(range(start, min(start + BATCH, N)))
            _, out_a, out_v = ref(data["audio"][rows], data["video"][rows])
            pred_a, pred_v = F.softmax(out_a, 1), F.softmax(out_v, 1)
            for i, r in enumerate(rows):
                kl_a = ref_kl_divergence(pred_a[i].numpy(), CLASSES)
                kl_v = ref_kl_divergence(pred_v[i].numpy(), CLASSES)
                (audio_rows if kl_a < kl_v else video_rows).append(r)
    ref.train()
    return audio_rows, video_rows


def ref_step(ref: RefModel, opt, audio, visual, label, mode=None):
    """One optimizer step of train_epoch (mode None) or special_train_epoch (mode 'video' / 'audio')."""
    opt.zero_grad()
    out, out_a, out_v = ref(audio, visual, mode)
    if mode is None:
        loss = F.cross_entropy(out, label) + 0.5 * F.cross_entropy(out_a, label) + 0.5 * F.cross_entropy(out_v, label)
    elif mode == "video":
        loss = F.cross_entropy(out, label) + 1.0 * F.cross_entropy(out_v, label)
    else:
        loss = F.cross_entropy(out, label) + 1.0 * F.cross_entropy(out_a, label)
    loss.backward()
    opt.step()
    return loss.detach()


def ref_adam(params):
    return torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)


# ----------------------------------------------------------------------------- set-up


def setup_run():
    """Tiny concat model and mmvid's balancer (default args), and the reference model on copies of the same
    weights; a 24-clip 'training set' served in batches of 4 by ctx.loader."""
    cfg = make_cfg(AV, balance="remix")
    cfg.data.batch_size = BATCH
    model = make_model(cfg)
    data, labels = make_batch(AV, N, seed=3)
    bal = BALANCERS.build("remix", cfg.balance, AV)
    aug = AUGMENTS.build("none", cfg.augment, AV)
    ctx = attach(cfg, model, aug, bal, [])
    torch.manual_seed(5)
    for head in bal.heads.values():  # heads whose predictions vary enough that both subsets are non-empty
        torch.nn.init.normal_(head.weight, std=0.5)
        torch.nn.init.zeros_(head.bias)
    ctx.splits = SimpleNamespace(train=np.arange(N), val=np.arange(0), test=np.arange(0))
    ctx.loader = lambda rows, train=False, shuffle=False: [
        ({m: data[m][list(rows[i:i + BATCH])] for m in AV}, labels[list(rows[i:i + BATCH])]) for i in range(0, len(rows), BATCH)]
    ctx.optimizer = ref_adam([p for g in ctx.optimizer.param_groups for p in g["params"]])
    ref_model, ref_heads = copy.deepcopy(model), copy.deepcopy(bal.heads)
    ref = RefModel(ref_model, ref_heads)
    return cfg, model, bal, aug, ctx, ref, (data, labels)


def all_params(model, bal):
    return list(model.parameters()) + list(bal.heads.parameters())


def ref_params(ref: RefModel):
    # the same order as all_params: encoders (audio, video), fusion (none for concat), head, then heads a, v
    return (list(ref.audio_net.parameters()) + list(ref.visual_net.parameters()) + list(ref.head.parameters())
            + list(ref.head_audio.parameters()) + list(ref.head_video.parameters()))


def warm_up_both(model, bal, aug, ctx, ref, ref_opt, data, labels):
    """One warm-up epoch on both sides (plain shuffled order), checking each step's loss."""
    ctx.epoch = 0
    bal.on_epoch_start(ctx)
    bal.epoch_order(list(range(N)), ctx)
    for start in range(0, N, BATCH):
        rows = list(range(start, start + BATCH))
        inputs, y = {m: data[m][rows] for m in AV}, labels[rows]
        _, loss = train_step(model, aug, bal, ctx, inputs, y)
        ref_loss = ref_step(ref, ref_opt, inputs["audio"], inputs["video"], y)
        torch.testing.assert_close(loss.detach(), ref_loss, **TOL)


# ----------------------------------------------------------------------------- tests


def test_kl_and_the_tie_rule_match_the_reference():
    probs = F.softmax(torch.randn(50, 6, generator=torch.Generator().manual_seed(0)) * 3, 1)
    probs[0] = 0.0
    probs[0, 2] = 1.0  # a one-hot row: the clip at 1e-9 matters
    ours = kl_to_uniform(probs)
    ref = torch.tensor([ref_kl_divergence(p.numpy(), 6) for p in probs], dtype=torch.float64)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    kl = torch.tensor([[0.1, 0.2], [0.3, 0.3], [0.5, 0.4]], dtype=torch.float64)
    assert assign_modalities(kl).tolist() == [0, 1, 1], "KL_a < KL_v -> audio, else (ties too) video"


def test_warm_up_then_assignment_and_remixed_steps_match_the_reference():
    cfg, model, bal, aug, ctx, ref, (data, labels) = setup_run()
    ref_opt = ref_adam(ref_params(ref))
    warm_up_both(model, bal, aug, ctx, ref, ref_opt, data, labels)
    for ours, theirs in zip(all_params(model, bal), ref_params(ref)):
        torch.testing.assert_close(ours, theirs, **TOL)

    # Decoupling after the warm-up: the assignment is exact.
    ctx.epoch = bal.warmup
    bal.on_epoch_start(ctx)
    ref_audio, ref_video = ref_remix(ref, data, labels)
    assert bal.assign.tolist() == [0 if r in ref_audio else 1 for r in range(N)]
    assert ref_audio and ref_video, "the check needs both subsets"

    # Reassembling: the video subset first, then the audio subset, each in the epoch's shuffled order.
    shuffled = torch.randperm(N, generator=torch.Generator().manual_seed(7)).tolist()
    order = bal.epoch_order(shuffled, ctx)
    video_first = [r for r in shuffled if r in ref_video] + [r for r in shuffled if r in ref_audio]
    assert order == video_first and bal.plan.tolist() == video_first

    # The remixed steps on the reference's unimodal batches: loss, then every weight after Adam's step
    # (the masked encoder moves too, by momentum and weight decay on its zero gradient).
    for mode, subset in (("video", [r for r in shuffled if r in ref_video]), ("audio", [r for r in shuffled if r in ref_audio])):
        for start in range(0, len(subset), BATCH):
            rows = subset[start:start + BATCH]
            inputs, y = {m: data[m][rows] for m in AV}, labels[rows]
            bal.plan, bal.first_step = torch.as_tensor(rows), ctx.step  # this batch as the epoch's next one
            _, loss = train_step(model, aug, bal, ctx, inputs, y)
            ref_loss = ref_step(ref, ref_opt, inputs["audio"], inputs["video"], y, mode)
            torch.testing.assert_close(loss.detach(), ref_loss, **TOL)
            for ours, theirs in zip(all_params(model, bal), ref_params(ref)):
                torch.testing.assert_close(ours, theirs, **TOL)


def test_a_straddling_batch_weighs_each_sample_as_its_own_subset_would():
    """The one mixed batch of the epoch: 1/B sum over samples = (n_v L_v + n_a L_a) / B, with L_m the
    reference's loss of the sub-batch of modality m; gradients alike. In eval mode, so that batch-norm
    statistics do not couple the samples (in train mode the sub-batches' statistics differ by construction)."""
    cfg, model, bal, aug, ctx, ref, (data, labels) = setup_run()
    rows = list(range(6))
    bal.assign = torch.tensor([1, 0, 0, 1, 1, 0] + [0] * (N - 6))
    bal.plan, bal.first_step, ctx.step = torch.as_tensor(rows), 0, 0
    cfg.data.batch_size = len(rows)
    inputs, y = {m: data[m][rows] for m in AV}, labels[rows]
    model.eval()
    ref.eval()
    out, plain = aug.compute(model, inputs, y, ctx)
    loss = bal.loss(plain, out, inputs, y, ctx)
    grads = torch.autograd.grad(loss, all_params(model, bal), allow_unused=True)

    ref_total = 0.0
    for mode, members in (("video", [0, 3, 4]), ("audio", [1, 2, 5])):
        sub = {m: data[m][members] for m in AV}
        out_f, out_a, out_v = ref(sub["audio"], sub["video"], mode)
        own = out_v if mode == "video" else out_a
        ref_total = ref_total + len(members) / len(rows) * (F.cross_entropy(out_f, y[members]) + F.cross_entropy(own, y[members]))
    ref_grads = torch.autograd.grad(ref_total, ref_params(ref), allow_unused=True)
    torch.testing.assert_close(loss, ref_total, **TOL)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, **TOL)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_rank_follows_its_share_of_the_remixed_order(world_size):
    cfg, model, bal, aug, ctx, ref, (data, labels) = setup_run()
    bal.assign = torch.tensor([r % 3 == 0 for r in range(N)]).long()  # rows 0, 3, ... -> video
    shuffled = torch.randperm(N, generator=torch.Generator().manual_seed(1)).tolist()
    ctx.world_size = world_size
    for rank in range(world_size):
        ctx.rank = rank
        order = bal.epoch_order(shuffled, ctx)
        assert bal.plan.tolist() == shard_order(order, rank, world_size)
    owners = bal.assign[torch.as_tensor(order)].tolist()
    assert owners == sorted(owners, reverse=True), "video samples first, then audio"


def test_sample_reassembly_keeps_the_shuffled_order():
    cfg = make_cfg(AV, balance="remix", balance_args={"reassemble": "sample"})
    bal = BALANCERS.build("remix", cfg.balance, AV)
    bal.assign = torch.tensor([0, 1] * 5)
    ctx = SimpleNamespace(rank=0, world_size=1)
    assert bal.epoch_order([3, 1, 4, 0, 2], ctx) == [3, 1, 4, 0, 2]
