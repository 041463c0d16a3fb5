"""InfoReg against its reference, GeWu-Lab/InfoReg_CVPR2025 ``main.py`` (``train_epoch``, commit ea7b9d5),
re-implemented below from reading it:

* out_a = a W[:, :d]^T + b/2, out_v = v W[:, d:]^T + b/2 (slices of the concat head); the step's gradient
  is that of CE(out) + CE(out_a) + CE(out_v) (``loss_out_v.backward``, ``loss_out_a.backward``,
  ``loss.backward``; the earlier per-loss backward passes followed by ``zero_grad`` only log);
* score_m = sum_i softmax(out_m)_i[y_i]; k = 1 at epoch 0, else (tr1 - tr2) / tr1 with tr1 = sum of the
  last 10 audio traces / 10, tr2 = the 10 before the last / 10, the list starting with ten zeros;
* if score_a > score_v and k > 0.05: beta = 0.95 exp(tanh(score_a - score_v)) on audio_net, elif
  score_a < score_v and k > 0.05: beta2 = 0.1 exp(tanh(score_v - score_a)) on visual_net, else none;
  grad += beta (w - w_global) for every trainable encoder parameter, w_global = deepcopy(model) at the
  start of the epoch;
* FIM: per Conv2d / Linear weight of each encoder, sum over steps of grad^2 (after the regulation);
  trace = sum over layers of the mean; then SGD(momentum 0.9, weight decay 1e-4) steps.

Identical tiny models (mmvid's, whose architecture is not what is tested), identical batches, the same
optimizer; compared per step (loss, beta), per epoch (k, traces) and at the end (every parameter).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from _methods_util import attach, make_batch, make_cfg, make_model, train_step
from torch import nn

from mmvid.balance import inforeg as inforeg_module
from mmvid.balance.inforeg import regulation_coefficients, window_ratio
from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]
LR = 0.05


# ----------------------------------------------------------------------------- the reference, re-implemented


def ref_k(epoch: int, audio_trace_list: list[float]) -> float:
    if epoch == 0:
        return 1
    tr1 = sum(audio_trace_list[-10:]) / 10
    tr2 = sum(audio_trace_list[-11:-1]) / 10
    return (tr1 - tr2) / tr1


def ref_fim_layers(net: nn.Module) -> dict[str, nn.Module]:
    return {n: mod for n, mod in net.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.weight.requires_grad}


def ref_train_epoch(model, epoch, batches, optimizer, traces, decisions, losses):
    """One epoch of main.py's train_epoch on mmvid's classifier (audio_net = encoders.audio, visual_net =
    encoders.video, head = the concat head). ``traces``: {"audio": [0]*10 + ..., "video": ...}."""
    k = ref_k(epoch, traces["audio"])
    global_model = copy.deepcopy(model)
    nets = {"audio": model.encoders.audio, "video": model.encoders.video}
    fim = {m: {n: torch.zeros_like(mod.weight) for n, mod in ref_fim_layers(nets[m]).items()} for m in nets}
    model.train()
    for inputs, label in batches:
        optimizer.zero_grad()
        out = model(inputs)
        a, v = out.features["audio"], out.features["video"]
        w, b = model.head.weight, model.head.bias
        half = w.size(1) // 2
        out_v = torch.mm(v, torch.transpose(w[:, half:], 0, 1)) + b / 2
        out_a = torch.mm(a, torch.transpose(w[:, :half], 0, 1)) + b / 2
        loss = F.cross_entropy(out.logits, label)
        loss_out_v = F.cross_entropy(out_v, label)
        loss_out_a = F.cross_entropy(out_a, label)
        loss_out_v.backward(retain_graph=True)
        loss_out_a.backward(retain_graph=True)
        loss.backward()
        losses.append(float((loss + loss_out_a + loss_out_v).detach()))
        score_v = sum([F.softmax(out_v, dim=1)[i][label[i]] for i in range(out_v.size(0))])
        score_a = sum([F.softmax(out_a, dim=1)[i][label[i]] for i in range(out_a.size(0))])
        if score_a > score_v and k > 0.05:
            beta, beta2 = 0.95 * torch.exp(torch.tanh(score_a - score_v)), 0
        elif score_a < score_v and k > 0.05:
            beta, beta2 = 0, 0.1 * torch.exp(torch.tanh(score_v - score_a))
        else:
            beta, beta2 = 0, 0
        decisions.append(tuple(float(torch.as_tensor(c).detach()) for c in (beta, beta2)))
        audio_ids = {id(p) for p in model.encoders.audio.parameters()}
        visual_ids = {id(p) for p in model.encoders.video.parameters()}
        with torch.no_grad():
            for p, gp in zip(model.parameters(), global_model.parameters()):
                if p.requires_grad and id(p) in audio_ids:
                    p.grad += beta * (p - gp)
                if p.requires_grad and id(p) in visual_ids:
                    p.grad += beta2 * (p - gp)
        for m, net in nets.items():
            for n, mod in ref_fim_layers(net).items():
                fim[m][n] += mod.weight.grad * mod.weight.grad
                fim[m][n].detach_()
        optimizer.step()
    for m in nets:
        traces[m].append(sum(f.mean().item() for f in fim[m].values()))
    return k


# ----------------------------------------------------------------------------- set-up


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)


def twin_models(lead: str | None = None, scale: float = 4.0):
    """The mmvid model and an identical copy for the reference; ``lead``: scale that modality's half of the
    head so that its unimodal scores lead (both branches of the reference's decision get exercised)."""
    cfg = make_cfg(AV, balance="inforeg")
    model = make_model(cfg)
    if lead is not None:
        half = model.head.weight.shape[1] // 2
        cols = slice(0, half) if lead == "audio" else slice(half, None)
        with torch.no_grad():
            model.head.weight[:, cols] *= scale
    return cfg, model, copy.deepcopy(model)


def run_mmvid(cfg, model, batches, epochs, start_epoch=0, traces=None, monkeypatch=None):
    """mmvid's InfoReg through the engine's hook order; returns (balancer, per-step betas, losses, k per epoch)."""
    bal = BALANCERS.build("inforeg", cfg.balance, AV)
    bal.check(cfg.model, "none")
    aug = AUGMENTS.build("none", cfg.augment, AV)
    ctx = attach(cfg, model, aug, bal, batches)
    ctx.optimizer = sgd(model)
    if traces is not None:
        bal.traces = {m: list(t) for m, t in traces.items()}
    betas, losses, ks = [], [], []
    original = inforeg_module.regulation_coefficients

    def recording(*args):
        out = original(*args)
        betas.append((out["audio"], out["video"]))
        return out

    monkeypatch.setattr(inforeg_module, "regulation_coefficients", recording)
    for epoch in range(start_epoch, start_epoch + epochs):
        ctx.epoch = epoch
        bal.on_epoch_start(ctx)
        ks.append(bal.k["audio"])
        for inputs, y in batches:
            _, loss = train_step(model, aug, bal, ctx, inputs, y)
            losses.append(float(loss.detach()))
        bal.on_epoch_end(ctx)
    return bal, betas, losses, ks


def run_reference(model, batches, epochs, start_epoch=0, traces=None):
    opt = sgd(model)
    traces = {m: [0] * 10 + list((traces or {}).get(m, [])) for m in AV}
    decisions, losses, ks = [], [], []
    for epoch in range(start_epoch, start_epoch + epochs):
        ks.append(ref_k(epoch, traces["audio"]))
        ref_train_epoch(model, epoch, batches, opt, traces, decisions, losses)
    return {m: t[10:] for m, t in traces.items()}, decisions, losses, ks


BATCHES = [make_batch(AV, 8, seed=s) for s in range(3)]


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("lead", [None, "audio", "video"])
def test_three_epochs_equal_the_reference_step_by_step(lead, monkeypatch):
    """Loss (1e-5 rel.), beta per step (1e-5 rel.: float64 scores here, float32 sums in the reference),
    k and both Fisher traces per epoch (1e-4 rel.), and every parameter after 9 SGD steps (1e-4 rel.)."""
    cfg, model, ref_model = twin_models(lead)
    bal, betas, losses, ks = run_mmvid(cfg, model, BATCHES, 3, monkeypatch=monkeypatch)
    ref_traces, ref_betas, ref_losses, ref_ks = run_reference(ref_model, BATCHES, 3)
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    assert len(betas) == len(ref_betas) == 9
    for got, want in zip(betas, ref_betas):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-12)
    assert ks == pytest.approx(ref_ks, rel=1e-4) and ks[:2] == [1, 1] and 0.05 < ks[2] < 1  # T_0 / (T_0 + T_1)
    for m in AV:
        assert bal.traces[m] == pytest.approx(ref_traces[m], rel=1e-4), m
    regulated = [("audio", "video")[int(b[1] > 0)] for b in ref_betas if max(b) > 0]
    if lead is not None:
        assert regulated.count(lead) >= 6, f"the scaled {lead} half of the head must lead most steps: {ref_betas}"
    assert all(max(b) > 0 for b in ref_betas), "the window is open in the first epochs: every step regulates"
    ref_params = dict(ref_model.named_parameters())
    for n, p in model.named_parameters():
        assert torch.allclose(p, ref_params[n], rtol=1e-4, atol=1e-6), n


def test_regulation_is_the_proximal_gradient_towards_the_epoch_start(monkeypatch):
    """The pull is visible: without it (alpha 0) the weights after an epoch differ from the regulated ones."""
    cfg, model, _ = twin_models("audio")
    plain_cfg, plain, _ = twin_models("audio")
    plain_cfg.balance.args = {"alpha": 0.0}
    run_mmvid(cfg, model, BATCHES, 1, monkeypatch=monkeypatch)
    run_mmvid(plain_cfg, plain, BATCHES, 1, monkeypatch=monkeypatch)
    a = torch.cat([p.flatten() for p in model.encoders.audio.parameters()])
    b = torch.cat([p.flatten() for p in plain.encoders.audio.parameters()])
    assert not torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_closed_window_regulates_nothing_and_still_equals_the_reference(monkeypatch):
    """After 12 epochs of a flat audio trace k = 0 <= 0.05: no pull on either encoder, as the reference."""
    prior = {"audio": [2.0] * 12, "video": [1.0] * 12}
    cfg, model, ref_model = twin_models("audio")
    bal, betas, losses, ks = run_mmvid(cfg, model, BATCHES, 1, start_epoch=12, traces=prior, monkeypatch=monkeypatch)
    ref_traces, ref_betas, ref_losses, ref_ks = run_reference(ref_model, BATCHES, 1, start_epoch=12, traces=prior)
    assert ks == ref_ks == [0.0]
    assert betas == [(0.0, 0.0)] * 3 and ref_betas == [(0.0, 0.0)] * 3
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    ref_params = dict(ref_model.named_parameters())
    for n, p in model.named_parameters():
        assert torch.allclose(p, ref_params[n], rtol=1e-4, atol=1e-6), n


@pytest.mark.parametrize("length", [1, 2, 5, 10, 11, 12, 25])
def test_window_ratio_is_the_references_k(length):
    g = torch.Generator().manual_seed(length)
    traces = (torch.rand(length, generator=g, dtype=torch.float64) * 3 + 0.1).tolist()
    assert window_ratio(traces) == pytest.approx(ref_k(length, [0] * 10 + traces), rel=1e-12)
    assert window_ratio([]) == 1.0 == ref_k(0, [0] * 10)
    assert window_ratio([0.0, 0.0]) == 0.0, "no gradient at all: the window is closed (the reference divides by 0)"


@pytest.mark.parametrize("s_a, s_v, open_", [(5.0, 3.0, True), (3.0, 5.0, True), (4.0, 4.0, True), (6.0, 1.0, False),
                                             (7.9, 0.1, True), (0.2, 7.7, True)])
def test_decision_branches_equal_the_reference(s_a, s_v, open_):
    if s_a > s_v and open_:
        want = {"audio": 0.95 * math.exp(math.tanh(s_a - s_v)), "video": 0.0}
    elif s_a < s_v and open_:
        want = {"audio": 0.0, "video": 0.1 * math.exp(math.tanh(s_v - s_a))}
    else:
        want = {"audio": 0.0, "video": 0.0}
    got = regulation_coefficients({"audio": s_a, "video": s_v}, {"audio": 0.95, "video": 0.1},
                                  {"audio": open_, "video": open_})
    assert got == pytest.approx(want, rel=1e-12, abs=0)


def test_own_trace_gates_each_modality_with_its_own_window():
    cfg = make_cfg(AV, balance="inforeg", balance_args={"trace": "own"})
    model = make_model(cfg)
    bal = BALANCERS.build("inforeg", cfg.balance, AV)
    ctx = attach(cfg, model, AUGMENTS.build("none", cfg.augment, AV), bal, BATCHES)
    bal.traces = {"audio": [2.0] * 12, "video": [1.0] * 11 + [3.0]}
    ctx.epoch = 12
    bal.on_epoch_start(ctx)
    assert bal.k["audio"] == 0.0 and bal.k["video"] == pytest.approx(window_ratio(bal.traces["video"]))
    assert bal.k["video"] > 0.05


def test_resume_inside_an_epoch_continues_exactly(monkeypatch):
    """state_dict after 2 steps -> a fresh balancer -> the 3rd step's gradients and the epoch's traces equal
    those of the uninterrupted run; the state is plain enough for a weights_only checkpoint."""
    from mmvid.engine.checkpoints import check_plain

    cfg, model, twin = twin_models("audio")
    aug = AUGMENTS.build("none", cfg.augment, AV)
    runs = []
    for net in (model, twin):
        bal = BALANCERS.build("inforeg", cfg.balance, AV)
        ctx = attach(cfg, net, aug, bal, BATCHES)
        ctx.optimizer = sgd(net)
        bal.on_epoch_start(ctx)
        for inputs, y in BATCHES[:2]:
            train_step(net, aug, bal, ctx, inputs, y)
        runs.append((bal, ctx))
    state = runs[1][0].state_dict()
    check_plain(state)
    fresh = BALANCERS.build("inforeg", cfg.balance, AV)
    fresh.load_state_dict(state)
    runs[1] = (fresh, runs[1][1])
    for (bal, ctx), net in zip(runs, (model, twin)):
        train_step(net, aug, bal, ctx, *BATCHES[2])
        bal.on_epoch_end(ctx)
    assert runs[0][0].traces == runs[1][0].traces
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), n


def test_mask_scores_and_no_unimodal_loss_are_options():
    cfg = make_cfg(AV, fusion="film", balance="inforeg", balance_args={"score": "mask", "uni_loss": False})
    model = make_model(cfg)
    bal = BALANCERS.build("inforeg", cfg.balance, AV)
    bal.check(cfg.model, "none")
    aug = AUGMENTS.build("none", cfg.augment, AV)
    ctx = attach(cfg, model, aug, bal, BATCHES)
    bal.on_epoch_start(ctx)
    out, loss = train_step(model, aug, bal, ctx, *BATCHES[0])
    assert float(loss) == pytest.approx(float(F.cross_entropy(out.logits, BATCHES[0][1])), rel=1e-6)
    assert set(bal.log()) >= {"inforeg_beta_audio", "inforeg_k_audio", "inforeg_s_video"}


def test_bad_options_are_one_clear_error():
    def build(args, mods=AV, fusion="concat"):
        cfg = make_cfg(mods, fusion=fusion, balance="inforeg", balance_args=args)
        BALANCERS.build("inforeg", cfg.balance, mods).check(cfg.model, "none")

    with pytest.raises(MmvidError, match="balance.args.score"):
        build({"score": "heads"})
    with pytest.raises(MmvidError, match="split-head"):
        build({}, fusion="film")
    with pytest.raises(MmvidError, match="balance.args.trace"):
        build({"alpha": 0.5}, mods=["video", "flow"])
    with pytest.raises(MmvidError, match="balance.args.alpha"):
        build({}, mods=["audio", "video", "flow"])
    with pytest.raises(MmvidError, match="balance.args.window"):
        build({"window": 0})
    with pytest.raises(MmvidError, match="at least 2 modalities"):
        build({}, mods=["video"])
    build({"alpha": 0.5}, mods=["audio", "video", "flow"])
