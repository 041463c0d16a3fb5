"""Sample-level modality valuation against its reference, GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation,
re-implemented below from reading ``code/sample_level.py`` (commit 01f7e56: ``execute_modulation``: eval mode,
no gradient, softmax of ``out``, ``exec_drop(a, v, 'audio')`` and ``exec_drop(a, v, 'visual')``; value_all = 2,
value_a = value_v = 1 when the argmax is the label; contrib_a = (value_a + value_all - value_v) / 2),
``code/datasets/dataloader.py`` (``AV_KS_Dataset_sample_level``: copies with drop 2 (visual zeroed) for audio's
bins, then drop 1 (audio zeroed) for video's; ``AV_KS_Dataset_modality_level``: np.random.choice draws),
``code/modality_level.py`` (part_ratio, gap, ``part_difference``) and ``code/models/models.py``
(``forward(drop)`` zeroes the dropped pooled feature in place before the concat head; ``train_epoch``: mean CE).
BalanceBenchmark's ``Calculate_Shapley_Sample`` (v = 1[correct], empty coalition left out) for ``valuation:
balancebenchmark``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _methods_util import CLASSES, attach, make_batch, make_cfg, make_model, train_step

from mmvid.balance.valuate import copies, sample_level_entries, shapley
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]
AVF = ["audio", "video", "flow"]
N, BATCH = 24, 6
TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-5)  # float32 sums over a head with large weights (see setup)


# ----------------------------------------------------------------------------- the reference, re-implemented


class RefModel(torch.nn.Module):
    """AVClassifier with ``forward(drop)`` and ``exec_drop`` on mmvid's encoders and concat head."""

    def __init__(self, model):
        super().__init__()
        self.audio_net, self.visual_net, self.head = model.encoders["audio"], model.encoders["video"], model.head

    def forward(self, audio, visual, drop=None):
        a, v = self.audio_net(audio), self.visual_net(visual)
        if drop is not None:
            for i in range(len(drop)):
                if drop[i] == 1:
                    a[i, :] = 0.0
                elif drop[i] == 2:
                    v[i, :] = 0.0
        return a, v, self.head(torch.cat((a, v), 1))

    def exec_drop(self, a, v, drop):
        ad, vd = (torch.zeros_like(a), v) if drop == "audio" else (a, torch.zeros_like(v))
        return self.head(torch.cat((ad, vd), 1))


def ref_contribution(ref, batches):
    contribution = {}
    ref.eval()
    with torch.no_grad():
        base = 0
        for inputs, label in batches:
            a, v, out = ref(inputs["audio"], inputs["video"])
            pred, pred_v, pred_a = (F.softmax(x, 1) for x in (out, ref.exec_drop(a, v, "audio"), ref.exec_drop(a, v, "visual")))
            for i in range(len(label)):
                value_all = 2.0 if np.argmax(pred[i].numpy()) == label[i] else 0.0
                value_v = 1.0 if np.argmax(pred_v[i].numpy()) == label[i] else 0.0
                value_a = 1.0 if np.argmax(pred_a[i].numpy()) == label[i] else 0.0
                contribution[base + i] = ((value_a + value_all - value_v) / 2.0, (value_v + value_all - value_a) / 2.0)
            base += len(label)
    return contribution


def ref_sample_level(contribution, n):
    """AV_KS_Dataset_sample_level: (index, drop) for every entry, originals first (drop 0)."""
    data = [(i, 0) for i in range(n)]
    for i in range(n):
        ca, cv = contribution[i]
        for c, drop in ((ca, 2), (cv, 1)):
            k = 1 if 0.4 < c < 0.9 else 2 if -0.1 < c < 0.4 else 3 if c < -0.1 else 0
            data += [(i, drop)] * k
    return data


def ref_modality_level(contribution, n, part_ratio=0.2, alpha=1.0):
    num = int(n * part_ratio)
    choice = np.random.choice(n, num)
    part_a = sum(contribution[i][0] for i in choice) / num
    part_v = sum(contribution[i][1] for i in choice) / num
    gap_a, gap_v = 1.0 - part_a, 1.0 - part_v
    difference = (abs(gap_a - gap_v) / 3 * 2) * alpha
    data = [(i, 0) for i in range(n)]
    for i in np.random.choice(n, int(difference * n)):
        data.append((int(i), 2 if gap_a > gap_v else 1))
    return data, difference


def as_focus(data):
    """Reference drop codes -> mmvid focus: drop 2 (visual zeroed) trains audio (0), drop 1 trains video (1)."""
    return [(i, {0: -1, 2: 0, 1: 1}[d]) for i, d in data]


# ----------------------------------------------------------------------------- fixtures


def setup(level="sample", args=None, seed=0):
    cfg = make_cfg(AV, balance="valuate", balance_args={"warmup": 1, "level": level, **(args or {})})
    cfg.data.batch_size = BATCH
    model = make_model(cfg)
    with torch.no_grad():  # a few wrong and right coalitions on random data: spread the head's weights
        g = torch.Generator().manual_seed(seed)
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=g) * 20.0)
        model.head.bias.zero_()
    batches = [make_batch(AV, BATCH, seed=s) for s in range(N // BATCH)]
    batches = [(x, (y + s) % CLASSES) for s, (x, y) in enumerate(batches)]
    aug = AUGMENTS.build("none", cfg.augment, AV)
    bal = BALANCERS.build("valuate", cfg.balance, AV)
    bal.check(cfg.model, "none")
    ctx = attach(cfg, model, aug, bal, batches)
    return cfg, model, aug, bal, ctx, batches


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contributions_and_sample_selection_equal_the_reference(seed):
    cfg, model, aug, bal, ctx, batches = setup(seed=seed)
    ref = RefModel(copy.deepcopy(model))
    contribution = ref_contribution(ref, batches)
    ctx.epoch = 1
    bal.on_epoch_start(ctx)
    want = torch.tensor([contribution[i] for i in range(N)], dtype=torch.float64)
    torch.testing.assert_close(bal.phi, want, rtol=0, atol=1e-12)
    assert len(set(want.flatten().tolist())) > 2, "the inputs must reach several contribution values"
    assert sample_level_entries(bal.phi) == as_focus(ref_sample_level(contribution, N))


def test_warmup_trains_plainly_and_keeps_the_order():
    cfg, model, aug, bal, ctx, batches = setup(args={"warmup": 3})
    ctx.epoch = 2
    bal.on_epoch_start(ctx)
    assert bal.phi is None and bal.epoch_order(list(range(N)), ctx) == list(range(N))
    inputs, y = batches[0]
    out, base = aug.compute(model, inputs, y, ctx)
    assert bal.loss(base, out, inputs, y, ctx) is base


def test_epoch_order_is_a_shuffle_of_the_reference_dataset():
    cfg, model, aug, bal, ctx, batches = setup()
    ctx.epoch = 1
    bal.on_epoch_start(ctx)
    order = bal.epoch_order(list(range(N)), ctx)
    want = as_focus(ref_sample_level(ref_contribution(RefModel(copy.deepcopy(model)), batches), N))
    assert len(order) == len(want) > N
    assert sorted(zip(order, bal.plan[:, 1].tolist())) == sorted(want)
    assert bal.epoch_order(list(range(N)), ctx) == order, "the same order on every call and rank"


def test_loss_gradients_and_update_equal_the_reference_train_epoch():
    cfg, model, aug, bal, ctx, batches = setup()
    ref = RefModel(copy.deepcopy(model))
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    ctx.epoch = 1
    bal.on_epoch_start(ctx)
    order = bal.epoch_order(list(range(N)), ctx)
    plan = bal.plan.tolist()
    data = {m: torch.cat([b[0][m] for b in batches]) for m in AV}
    labels = torch.cat([b[1] for b in batches])
    focus_to_drop = {-1: 0, 0: 2, 1: 1}
    ref.train()
    assert any(f >= 0 for _, f in plan[:BATCH]) and any(f < 0 for _, f in plan[:BATCH]), "a mixed batch first"
    for k in range(2):
        rows = torch.as_tensor(order[k * BATCH:(k + 1) * BATCH])
        drop = torch.as_tensor([focus_to_drop[f] for _, f in plan[k * BATCH:(k + 1) * BATCH]])
        inputs, y = {m: data[m][rows] for m in AV}, labels[rows]
        ref_opt.zero_grad()
        _, _, out = ref(inputs["audio"], inputs["video"], drop)
        ref_loss = F.cross_entropy(out, y)
        ref_loss.backward()
        ref_grads = {n: p.grad.clone() for n, p in ref.named_parameters()}
        ref_opt.step()
        _, loss = train_step(model, aug, bal, ctx, inputs, y)
        torch.testing.assert_close(loss, ref_loss, **TOL)
        mine = dict(model.named_parameters())
        for n, g in ref_grads.items():
            name = n.replace("audio_net", "encoders.audio").replace("visual_net", "encoders.video")
            torch.testing.assert_close(mine[name].grad, g, **GRAD_TOL)
    for n, p in ref.named_parameters():
        name = n.replace("audio_net", "encoders.audio").replace("visual_net", "encoders.video")
        torch.testing.assert_close(dict(model.named_parameters())[name], p, **TOL)


def test_modality_level_selection_equals_the_reference():
    cfg, model, aug, bal, ctx, batches = setup(level="modality")
    contribution = ref_contribution(RefModel(copy.deepcopy(model)), batches)
    ctx.epoch = 1
    bal.on_epoch_start(ctx)
    np.random.seed(cfg.seed + ctx.epoch)
    want, p = ref_modality_level(contribution, N)
    got = bal.entries(ctx)
    assert got == as_focus(want) and bal.prob == pytest.approx(p, abs=1e-12)


def test_balancebenchmark_valuation():
    """Calculate_Shapley_Sample: v(S) = 1[S right], S over non-empty subsets of the others only."""
    right = {("audio",): torch.tensor([1, 0, 1, 0]), ("video",): torch.tensor([0, 1, 1, 0]),
             ("audio", "video"): torch.tensor([1, 1, 0, 0])}
    right = {k: v.bool() for k, v in right.items()}
    phi = shapley(right, AV, "balancebenchmark")
    want = torch.tensor([[0.5 * (1 - 0), 0.5 * (1 - 1)], [0.5 * (1 - 1), 0.5 * (1 - 0)], [-0.5, -0.5], [0, 0]],
                        dtype=torch.float64)
    torch.testing.assert_close(phi, want)
    assert copies(torch.tensor([[0.5, 0.95, 1.0]]), "balancebenchmark").tolist() == [[1, 1, 0]]
    assert copies(torch.tensor([[0.5, 0.95, 1.0]]), "original").tolist() == [[1, 0, 0]]


def test_three_modalities_shapley_is_efficient_and_symmetric():
    """Generalisation beyond the reference's two modalities: sum_m phi_m = v(M) - v(empty) (efficiency)."""
    g = torch.Generator().manual_seed(0)
    subsets = [("audio",), ("video",), ("flow",), ("audio", "video"), ("audio", "flow"), ("video", "flow"), tuple(AVF)]
    right = {S: torch.rand(50, generator=g) > 0.5 for S in subsets}
    phi = shapley(right, AVF)
    torch.testing.assert_close(phi.sum(1), 3.0 * right[tuple(AVF)].double())
