"""AGM against its reference, lihong2303/AGM_ICCV2023 (HEAD 5a65542) ``run/CREMAD_main.py`` (``train``) and
``model/CREMAD_net.py`` (``GradMod``), re-implemented below from reading them: the training forward, then
eval-mode forwards *with gradient* on zeroed audio / visual inputs, the Shapley outputs
``m_a = 0.5 (total - pad_audio + pad_visual)`` and ``m_v = 0.5 (total - pad_visual + pad_audio)`` passed
through identity modules whose full backward hooks multiply the gradient by ``scale_a`` / ``scale_v``;
``out = m_a + m_v``; the per-sample score loop with its 1e-8 floor; ``ratio``/``optimal_ratio``/``coeff``
with ``min(., 10)``; the running means over ``iteration``; ``update_scale`` before ``loss.backward()``;
and the conditional ``clip_grad_norm_`` when ``fc_out.weight.grad`` leaves [-1, 1].

Identical tiny models and batches; coefficients to 1e-6 relative (its scores are float32 sums), gradients and parameters to 1e-5.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from _methods_util import attach, make_batch, make_cfg, make_model
from torch import nn

from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]
AVF = ["audio", "video", "flow"]


# ----------------------------------------------------------------------------- the reference, re-implemented


class Identity(nn.Module):
    def forward(self, x):
        return x


class RefGradMod(nn.Module):
    """GradMod of model/CREMAD_net.py around one of our classifiers (``net``), for any number of
    modalities: two as CREMAD_net.py, three with BalanceBenchmark's Modality_Audio/Visual/Text weights
    (1/3, 1/6, 1/3), all computed with gradient as CREMAD_net.py does."""

    def __init__(self, net, modalities, pad="input"):
        super().__init__()
        self.net, self.mods, self.pad = net, list(modalities), pad
        self.outs = nn.ModuleDict({m: Identity() for m in self.mods})
        self.scale = dict.fromkeys(self.mods, 1.0)
        for m in self.mods:
            self.outs[m].register_full_backward_hook(self._hook(m))

    def _hook(self, m):
        def hook(module, ginp, gout):
            return (ginp[0].clone() * self.scale[m],)
        return hook

    def update_scale(self, coeffs):
        self.scale = dict(coeffs)

    def forward(self, inputs):
        full = self.net(inputs)
        self.net.eval()
        f = {tuple(self.mods): full.logits}
        for r in range(1, len(self.mods)):
            for keep in _combinations(self.mods, r):
                if self.pad == "input":
                    f[keep] = self.net({m: (x if m in keep else torch.zeros_like(x)) for m, x in inputs.items()}).logits
                else:
                    f[keep] = self.net.classify({m: (z if m in keep else torch.zeros_like(z)) for m, z in full.features.items()})
        self.net.train()
        if len(self.mods) == 2:
            a, v = self.mods
            ma = 0.5 * (f[(a, v)] - f[(v,)] + f[(a,)])
            mv = 0.5 * (f[(a, v)] - f[(a,)] + f[(v,)])
            mono = {a: ma, v: mv}
        else:
            a, v, t = self.mods
            AVT, AV_, AT, VT, A, V, T = f[(a, v, t)], f[(a, v)], f[(a, t)], f[(v, t)], f[(a,)], f[(v,)], f[(t,)]
            mono = {a: 1 / 3 * (AVT - VT) + 1 / 6 * (AV_ - V + AT - T) + 1 / 3 * A,
                    v: 1 / 3 * (AVT - AT) + 1 / 6 * (AV_ - A + VT - T) + 1 / 3 * V,
                    t: 1 / 3 * (AVT - AV_) + 1 / 6 * (VT - V + AT - A) + 1 / 3 * T}
        outs = {m: self.outs[m](mono[m]) for m in self.mods}
        return mono, sum(outs.values())


def _combinations(mods, r):
    import itertools

    return list(itertools.combinations(mods, r))


def ref_score(out_m, label):
    softmax = nn.Softmax(dim=1)
    score = 0.0
    for k in range(out_m.size(0)):
        p = softmax(out_m)[k][label[k]]
        if torch.isinf(torch.log(p)) or p < 1e-8:
            score += -torch.log(torch.tensor(1e-8, dtype=out_m.dtype))
        else:
            score += -torch.log(p)
    return score / out_m.size(0)


class RefAGM:
    """The per-step part of ``train`` in run/CREMAD_main.py (``methods == "AGM"``), generalised to M
    modalities as run/MOSEI_main.py (``exp((mean - s_m) * M / (M - 1))``)."""

    def __init__(self, wrapper, alpha=1.0, starts=0, ends=20, clip=1.0):
        self.w, self.alpha, self.starts, self.ends, self.clip = wrapper, alpha, starts, ends, clip
        self.train_score = dict.fromkeys(wrapper.mods, 0.0)
        self.iteration = 0
        self.last_coeffs = None

    def step(self, inputs, label, epoch_1based, optimizer):
        mods = self.w.mods
        n = len(mods)
        mono, out = self.w(inputs)
        loss = F.cross_entropy(out, label)
        self.iteration += 1
        optimizer.zero_grad()
        score = {m: ref_score(mono[m], label) for m in mods}
        mean = sum(s.item() for s in score.values()) / n
        opt_mean = sum(self.train_score.values()) / n
        ratio = {m: math.exp(n / (n - 1) * (mean - score[m].item())) for m in mods}
        optimal = {m: math.exp(n / (n - 1) * (opt_mean - self.train_score[m])) for m in mods}
        coeff = {m: math.exp(self.alpha * min(optimal[m] - ratio[m], 10)) for m in mods}
        it = self.iteration
        self.train_score = {m: self.train_score[m] * (it - 1) / it + score[m].item() / it for m in mods}
        if self.starts <= epoch_1based <= self.ends:
            self.w.update_scale(coeff)
            self.last_coeffs = coeff
        loss.backward()
        g = self.w.net.head.weight.grad
        self.clipped = bool(torch.max(g) > self.clip or torch.min(g) < -self.clip)
        if self.clipped:
            nn.utils.clip_grad_norm_(self.w.parameters(), max_norm=self.clip)
        return coeff, loss


# ----------------------------------------------------------------------------- set-up


def pair(mods=AV, lr=0.5, **args):
    """Our model + AGM balancer and an identical copy inside the reference wrapper, both with SGD."""
    cfg = make_cfg(mods, balance="agm", balance_args=args)
    model = make_model(cfg)
    ref_net = copy.deepcopy(model)
    bal = BALANCERS.build("agm", cfg.balance, mods)
    bal.check(cfg.model, "none")
    augment = AUGMENTS.build("none", cfg.augment, mods)
    ctx = attach(cfg, model, augment, bal, [])
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    wrapper = RefGradMod(ref_net, mods, pad=args.get("pad", "input"))
    ref = RefAGM(wrapper, alpha=args.get("alpha", 1.0), clip=args.get("clip", 1.0) or float("inf"),
                 ends=args.get("end", 19) + 1)
    return model, bal, augment, ctx, ref, torch.optim.SGD(ref_net.parameters(), lr=lr)


def our_step(model, bal, augment, ctx, inputs, y):
    model.train()
    out, loss = augment.compute(model, inputs, y, ctx)
    loss = bal.loss(loss, out, inputs, y, ctx)
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    bal.after_backward(model, out, y, ctx)
    return loss


def assert_same_grads(model, ref_net, tol=1e-5):
    ref = dict(ref_net.named_parameters())
    for name, p in model.named_parameters():
        if p.grad is None:
            assert ref[name].grad is None or ref[name].grad.abs().max() == 0, name
            continue
        assert torch.allclose(p.grad, ref[name].grad, rtol=tol, atol=tol), \
            f"{name}: max diff {float((p.grad - ref[name].grad).abs().max())}"


def skewed_batch(mods, seed):
    """A batch whose audio carries its label (a class-dependent offset), so that the modalities' mono-modal
    losses part after a step or two and the coefficients move away from 1."""
    inputs, y = make_batch(mods, 8, seed=seed)
    inputs["audio"] = inputs["audio"] + 2.0 * (y.float() - 1.5).view(-1, 1, 1, 1)
    return inputs, y


def run_both(mods, steps, epoch_of=lambda i: 0, **args):
    model, bal, augment, ctx, ref, ref_opt = pair(mods, **args)
    record = []
    for i in range(steps):
        inputs, y = skewed_batch(mods, seed=10 + i)
        ctx.epoch = epoch_of(i)
        loss = our_step(model, bal, augment, ctx, inputs, y)
        k_ref, ref_loss = ref.step(inputs, y, ctx.epoch + 1, ref_opt)
        assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-5)
        assert_same_grads(model, ref.w.net)
        record.append((dict(bal.coeffs), k_ref, ref.last_coeffs, getattr(ref, "clipped", False)))
        ctx.optimizer.step()
        ref_opt.step()
    for name, p in model.named_parameters():
        assert torch.allclose(p, dict(ref.w.net.named_parameters())[name], rtol=1e-5, atol=1e-5), name
    return bal, ref, record


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("s_a, s_v, r_a, r_v", [(1.2, 1.9, 1.5, 1.5), (0.4, 2.0, 0.1, 3.0), (2.0, 0.1, 0.0, 0.0),
                                                  (0.1, 9.0, 0.0, 0.0)])
def test_coefficients_are_the_reference_formula(s_a, s_v, r_a, r_v):
    from mmvid.balance.agm import agm_coefficients

    got = agm_coefficients({"audio": s_a, "video": s_v}, {"audio": r_a, "video": r_v}, 1.0)
    want_a = math.exp(min(math.exp(r_v - r_a) - math.exp(s_v - s_a), 10))
    want_v = math.exp(min(math.exp(r_a - r_v) - math.exp(s_a - s_v), 10))
    assert got == {"audio": pytest.approx(want_a, rel=1e-12), "video": pytest.approx(want_v, rel=1e-12)}


def test_three_modality_weights_are_balancebenchmarks_gradmod():
    from mmvid.measures import shapley_matrix

    a = shapley_matrix(["a", "v", "t"])["a"]
    assert a == {("a",): pytest.approx(1 / 3), ("v",): pytest.approx(-1 / 6), ("t",): pytest.approx(-1 / 6),
                 ("a", "v"): pytest.approx(1 / 6), ("a", "t"): pytest.approx(1 / 6), ("v", "t"): pytest.approx(-1 / 3),
                 ("a", "v", "t"): pytest.approx(1 / 3)}


@pytest.mark.parametrize("mods", [AV, AVF], ids=["2mod", "3mod"])
def test_coefficients_gradients_and_updates_equal_the_reference(mods):
    """Four SGD steps on different batches: each step's coefficients (relative 1e-6: the reference scores in float32), loss, every
    parameter's gradient (1e-5) and the updated parameters (1e-5) equal the reference's."""
    bal, ref, record = run_both(mods, 4)
    for ours, k_ref, _, _ in record:
        assert ours == {m: pytest.approx(k, rel=1e-6) for m, k in k_ref.items()}
    assert any(abs(k - 1) > 0.05 for ours, *_ in record for k in ours.values()), "the batches must modulate"
    assert bal.running == {m: pytest.approx(v, rel=1e-6) for m, v in ref.train_score.items()}


def test_the_reference_clipping_is_reproduced_when_it_fires():
    bal, ref, record = run_both(AV, 3, clip=0.02)
    assert any(clipped for *_, clipped in record), "clip 0.02 must fire on these batches"


def test_feature_padding_equals_the_same_wrapper_on_masked_features():
    run_both(AV, 3, pad="feature")


@pytest.mark.parametrize("hold", [True, False])
def test_after_the_last_modulated_epoch_the_hooks_keep_their_last_scale_or_reset(hold):
    """end 0: epoch 0 modulated, epoch 1 not. The reference keeps the hooks' last scale (hold: true);
    hold: false trains plainly, i.e. exactly plain cross-entropy gradients."""
    model, bal, augment, ctx, ref, ref_opt = pair(AV, end=0, hold=hold)
    inputs, y = skewed_batch(AV, seed=3)
    our_step(model, bal, augment, ctx, inputs, y)
    ref.step(inputs, y, 1, ref_opt)
    kept = dict(bal.coeffs)
    ctx.optimizer.step()
    ref_opt.step()
    ctx.epoch = 1
    inputs, y = skewed_batch(AV, seed=4)
    our_step(model, bal, augment, ctx, inputs, y)
    if hold:
        assert bal.coeffs == kept
        ref.step(inputs, y, 2, ref_opt)
        assert ref.last_coeffs == {m: pytest.approx(k, rel=1e-6) for m, k in kept.items()}
        assert_same_grads(model, ref.w.net)
    else:
        assert bal.coeffs == {"audio": 1.0, "video": 1.0}
        plain = copy.deepcopy(model)
        plain.zero_grad()
        F.cross_entropy(plain(inputs).logits, y).backward()
        ours = {n: p.grad for n, p in model.named_parameters()}
        for n, p in plain.named_parameters():  # the check after backward may clip; none of these grads is large
            assert torch.allclose(ours[n], p.grad, atol=1e-6), n


def test_state_round_trip_and_bad_options():
    bal, ref, record = run_both(AV, 2)
    state = bal.state_dict()
    cfg = make_cfg(AV, balance="agm")
    other = BALANCERS.build("agm", cfg.balance, AV)
    other.load_state_dict(state)
    assert other.running == bal.running and other.iteration == 2 and other.coeffs == bal.coeffs
    with pytest.raises(MmvidError, match="balance.args.pad"):
        BALANCERS.build("agm", make_cfg(AV, balance="agm", balance_args={"pad": "mean"}).balance, AV)
    with pytest.raises(MmvidError, match="balance.args.clip"):
        BALANCERS.build("agm", make_cfg(AV, balance="agm", balance_args={"clip": -1}).balance, AV)
