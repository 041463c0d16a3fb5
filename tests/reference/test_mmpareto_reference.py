"""MMPareto against its reference, GeWu-Lab/MMPareto_ICML2024 ``code/MMPareto.py`` (``train_epoch``) with
``code/min_norm_solvers.py`` (``MinNormSolver.find_min_norm_element``), commit cc923ec, and against
BalanceBenchmark's ``balancemm/trainer/MMPareto_trainer.py`` (``training_step``, commit 39ed569) for the
``heads: split`` + ``grads: accumulated`` options; both re-implemented below from reading them:

- the model ``AVClassifier``: audio_net, visual_net, head on cat(a, v), head_audio(a), head_video(v);
- per loss in (mm, audio, visual): backward(retain_graph) into .grad, clone the encoders' .grad by name
  (``'audio' in name``, no ``'head'``), plus their concatenation under the key ``concat``; zero_grad;
- per encoder: cos(concat mm, concat uni) > 0 -> weights (0.5, 0.5), else the min-norm solver on the lists of
  per-name gradients (the ``concat`` entry included, so every dot product is counted twice);
- backward of loss_mm + loss_a + loss_v; for each encoder parameter: new = 2 k0 g_mm + 2 k1 g_uni, raised to
  ||.grad|| when that is larger, times gamma = 1.5.

Identical weights and batch; the final per-parameter gradients (every parameter: encoders, fusion head,
unimodal heads) and one SGD update must agree to 1e-6 (float32 sums in different orders).
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _methods_util import attach, make_batch, make_cfg, make_model, train_step
from torch import nn

from mmvid.balance.mmpareto import min_norm_2
from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]
TOL = dict(rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the reference, re-implemented


def ref_from2(v1v1, v1v2, v2v2):
    """_min_norm_element_from2: (weight of x1, cost)."""
    if v1v2 >= v1v1:
        return 0.999, v1v1
    if v1v2 >= v2v2:
        return 0.001, v2v2
    gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
    return gamma, v2v2 + gamma * (v1v2 - v2v2)


def ref_min_norm(vecs):
    """find_min_norm_element for two tasks: dot products summed over the lists' entries (float32 torch
    sums, as _min_norm_2d), then the analytic two-point solution; returns [c, 1 - c]."""
    def dot(i, j):
        return sum(float(torch.mul(a, b).sum()) for a, b in zip(vecs[i], vecs[j]))
    c, _ = ref_from2(dot(0, 0), dot(0, 1), dot(1, 1))
    return [c, 1 - c]


class RefAV(nn.Module):
    """AVClassifier's forward on mmvid's encoders (copied weights): (out, out_audio, out_video)."""

    def __init__(self, model, heads):
        super().__init__()
        self.audio_net = copy.deepcopy(model.encoders["audio"])
        self.visual_net = copy.deepcopy(model.encoders["video"])
        self.head = copy.deepcopy(model.head)
        self.head_audio = copy.deepcopy(heads["audio"])
        self.head_video = copy.deepcopy(heads["video"])

    def forward(self, audio, visual):
        a, v = self.audio_net(audio), self.visual_net(visual)
        return self.head(torch.cat((a, v), 1)), self.head_audio(a), self.head_video(v)


def ref_step_grads(model: RefAV, inputs, label, gamma=1.5):
    """train_epoch's step up to optimizer.step(): name -> final .grad, and the (k_audio, k_visual) weights."""
    criterion = nn.CrossEntropyLoss()
    rec = {"audio": [], "visual": []}
    for name, param in model.named_parameters():
        if "head" in name:
            continue
        for m in rec:
            if m in name:
                rec[m].append((name, param))
    model.zero_grad()
    out, out_a, out_v = model(inputs["audio"], inputs["video"])
    losses = {"both": criterion(out, label), "audio": criterion(out_a, label), "visual": criterion(out_v, label)}
    grads = {"audio": {}, "visual": {}}
    for loss_type, loss in losses.items():
        loss.backward(retain_graph=True)
        for m in rec:
            if loss_type in (m, "both"):
                g = {n: p.grad.data.clone() for n, p in rec[m]}
                g["concat"] = torch.cat([g[n].flatten() for n, _ in rec[m]])
                grads[m][loss_type] = g
        model.zero_grad()
    k = {}
    for m in rec:
        cos = F.cosine_similarity(grads[m]["both"]["concat"], grads[m][m]["concat"], dim=0)
        k[m] = [0.5, 0.5] if cos > 0 else ref_min_norm([list(grads[m][t].values()) for t in ("both", m)])
    sum(losses.values()).backward()
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        layer = re.split("[_.]", name)
        if "head" in layer:
            continue
        for m in rec:
            if m in layer:
                three_norm = torch.norm(param.grad.data.clone())
                new_grad = 2 * k[m][0] * grads[m]["both"][name] + 2 * k[m][1] * grads[m][m][name]
                diff = three_norm / torch.norm(new_grad)
                param.grad = diff * new_grad * gamma if diff > 1 else new_grad * gamma
    return {n: p.grad.clone() for n, p in model.named_parameters()}, k


def bb_step_grads(model, inputs, label, alpha=1.5):
    """BalanceBenchmark's training_step (split heads Uni_res, keys audio, video, output): every loss is
    back-propagated into .grad before any is read, so both recorded gradients are the accumulated one."""
    criterion = nn.CrossEntropyLoss()
    model.zero_grad()
    out = model(inputs)
    w, b = model.head.weight, model.head.bias
    d = out.features["audio"].shape[1]
    uni = {"audio": out.features["audio"] @ w[:, :d].T + b / 2, "video": out.features["video"] @ w[:, d:].T + b / 2,
           "output": out.logits}
    loss = {k: criterion(v, label) for k, v in uni.items()}
    for v in loss.values():
        v.backward(retain_graph=True)
    rec = {m: [(n, p) for n, p in model.named_parameters() if "head" not in n and m in n] for m in AV}
    grads = {m: {t: {n: p.grad.data.clone() for n, p in rec[m]} for t in (m, "output")} for m in AV}
    weight = {}
    for m in AV:
        cos = F.cosine_similarity(torch.cat([g.flatten() for g in grads[m]["output"].values()]),
                                  torch.cat([g.flatten() for g in grads[m][m].values()]), dim=0)
        weight[m] = [0.5, 0.5] if cos > 0 else [0, 0]  # its else branch never sets the weights
    model.zero_grad()
    sum(loss.values()).backward()
    for name, param in model.named_parameters():
        layer = re.split("[_.]", name)
        if param.grad is None or "head" in layer:
            continue
        for m in AV:
            if m in layer:
                three_norm = torch.norm(param.grad.data.clone())
                new_grad = 2 * weight[m][0] * grads[m]["output"][name] + 2 * weight[m][1] * grads[m][m][name]
                diff = three_norm / torch.norm(new_grad)
                param.grad = diff * new_grad * alpha if diff > 1 else new_grad * alpha
    return {n: p.grad.clone() for n, p in model.named_parameters()}


# ----------------------------------------------------------------------------- set-up


def setup(**args):
    cfg = make_cfg(AV, balance="mmpareto", balance_args=args)
    model = make_model(cfg)
    bal = BALANCERS.build("mmpareto", cfg.balance, AV)
    bal.check(cfg.model, "none")
    ctx = attach(cfg, model, AUGMENTS.build("none", cfg.augment, AV), bal, [])
    return model, bal, ctx


def mmvid_grads(model, bal, ctx, inputs, y):
    train_step(model, AUGMENTS.build("none", ctx.cfg.augment, AV), bal, ctx, inputs, y)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    grads.update({f"heads.{n}": p.grad.clone() for n, p in bal.heads.named_parameters()} if bal.heads else {})
    return grads


REF_NAME = {"encoders.audio.": "audio_net.", "encoders.video.": "visual_net.", "heads.audio.": "head_audio.",
            "heads.video.": "head_video.", "head.": "head."}


def to_ref(name: str) -> str:
    prefix = next(p for p in REF_NAME if name.startswith(p))
    return REF_NAME[prefix] + name[len(prefix):]


def conflict_heads(model, bal) -> None:
    """Unimodal heads that score against the fused head's columns of their modality: their losses pull
    the encoders against the multimodal loss (cos < 0, the Pareto case)."""
    w = model.head.weight.detach()
    d = bal.heads["audio"].in_features
    with torch.no_grad():
        bal.heads["audio"].weight.copy_(-3 * w[:, :d])
        bal.heads["video"].weight.copy_(-3 * w[:, d:])


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", ["agree", "conflict"])
def test_final_gradients_equal_the_reference(case):
    """Both branches of the reference: equal weights when the gradients agree, the min-norm weights when
    they conflict; every parameter's final gradient matches."""
    inputs, y = make_batch(AV, 8, seed=3)
    model, bal, ctx = setup()
    if case == "conflict":
        conflict_heads(model, bal)
    ref = RefAV(model, bal.heads)
    expected, k = ref_step_grads(ref, inputs, y)
    if case == "agree":
        assert k == {"audio": [0.5, 0.5], "visual": [0.5, 0.5]}, "this batch should give agreeing gradients"
    else:
        assert all(0 < v[0] < 1 and v[0] != 0.5 for v in k.values()), f"both encoders should conflict: {k}"
    got = mmvid_grads(model, bal, ctx, inputs, y)
    assert {to_ref(n) for n in got} == set(expected)
    for n, g in got.items():
        torch.testing.assert_close(g, expected[to_ref(n)], **TOL, msg=n)
    stats = bal.log()
    assert stats["mmpareto_alpha_mm_audio"] == pytest.approx(k["audio"][0], rel=1e-5)
    assert stats["mmpareto_alpha_mm_video"] == pytest.approx(k["visual"][0], rel=1e-5)
    assert stats["mmpareto_conflict_audio"] == float(case == "conflict")


def test_sgd_update_equals_the_reference_in_the_conflict_case():
    """The parameter update of the reference's optimizer (SGD, momentum 0.9, weight decay 1e-4, lr 0.002)."""
    inputs, y = make_batch(AV, 8, seed=4)
    model, bal, ctx = setup()
    conflict_heads(model, bal)
    ref = RefAV(model, bal.heads)
    ref_step_grads(ref, inputs, y)
    torch.optim.SGD(ref.parameters(), lr=0.002, momentum=0.9, weight_decay=1e-4).step()
    params = list(model.parameters()) + list(bal.heads.parameters())
    ctx.optimizer = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=1e-4)
    train_step(model, AUGMENTS.build("none", ctx.cfg.augment, AV), bal, ctx, inputs, y)
    mine = dict(model.named_parameters()) | {f"heads.{n}": p for n, p in bal.heads.named_parameters()}
    theirs = dict(ref.named_parameters())
    for n, p in mine.items():
        torch.testing.assert_close(p, theirs[to_ref(n)], **TOL, msg=n)


def test_split_accumulated_equals_balancebenchmark():
    """heads=split, grads=accumulated: BalanceBenchmark's trainer, encoder gradients 2 * 1.5 * G."""
    inputs, y = make_batch(AV, 8, seed=5)
    model, bal, ctx = setup(heads="split", grads="accumulated")
    ref = copy.deepcopy(model)
    expected = bb_step_grads(ref, inputs, y)
    got = mmvid_grads(model, bal, ctx, inputs, y)
    assert bal.heads is None and set(got) == set(expected)
    for n, g in got.items():
        torch.testing.assert_close(g, expected[n], **TOL, msg=n)


def test_two_point_solver_equals_the_reference_including_its_end_points():
    rng = np.random.default_rng(0)
    cases = [(1.0, 2.0, 3.0), (3.0, 2.0, 1.0), (0.0, 0.0, 1.0), (2.0, -1.0, 0.5)]
    cases += [tuple(float(x) for x in (a @ a, a @ b, b @ b)) for a, b in rng.normal(size=(50, 2, 7))]
    for v11, v12, v22 in cases:
        assert min_norm_2(v11, v12, v22) == pytest.approx(ref_from2(v11, v12, v22)[0], rel=1e-12)


def test_options_are_checked():
    with pytest.raises(MmvidError, match="balance.args.heads"):
        setup(heads="shared")
    with pytest.raises(MmvidError, match="balance.args.grads"):
        setup(grads="sometimes")
    with pytest.raises(MmvidError, match="gamma"):
        setup(gamma=0)
    cfg = make_cfg(AV, fusion="film", balance="mmpareto", balance_args={"heads": "split"})
    with pytest.raises(MmvidError, match="heads=split needs"):
        BALANCERS.build("mmpareto", cfg.balance, AV).check(cfg.model, "none")
