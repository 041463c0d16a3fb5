"""ReconBoost against its references, re-implemented below from reading them:

* huacong/ReconBoost at 441eb51: ``train.py`` ``main`` (per stage: ``schedule_model`` picks the modality
  (fixed mode: audio, visual, ...); phase 1: a new SGD over the learner (encoder + the shared head), the
  boosting loss -w1 mean_c(t log p) + w2 mean_c(t softmax(F_-m) log p) against ``net_ensemble.forward(mask_model=m)``
  (no_grad; the constant c0 while the ensemble is empty), plus alpha * MSE of the detached softmaxes of
  the learner and the previous modality from stage 1 on; ``net_ensemble.add``; phase 2: a new SGD over the
  ensemble (encoders, head, boost_rate), CE(``forward_grad``)) and ``models/dynamic_net.py``
  (F = boost_rate * sum_k f(z_k); ``Head``: fc1 -> ReLU -> fc2);
* GeWu-Lab/BalanceBenchmark ``balancemm/trainer/ReconBoost_trainer.py`` (one optimizer throughout, every
  modality in the ensemble from the start, T_epochs = 1 per phase, no GA term in its epoch 0) and
  ``BaseClassifierReconBoostModel`` (boost_rate starts at 0.01, linear shared head).

mmvid's balancer runs with its *default* arguments for the authors' variant. Compared per step: the loss,
the modality trained, and every parameter after the update (BatchNorm running statistics are not: the
reference forwards the other encoders once or twice per step, or not at all while the ensemble is empty;
mmvid forwards each once).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _methods_util import CLASSES, make_batch, make_cfg, make_ctx, make_model, train_step

from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]
AVF = ["audio", "video", "flow"]
BATCH, N_BATCHES, LR, WD = 6, 2, 0.05, 5e-4


# ----------------------------------------------------------------------------- the reference, re-implemented


def ref_f(model, z):
    """The shared head on one modality's feature (the authors' Head with ``hidden``, else a Linear)."""
    head = model.head
    if head.hidden is not None:
        z = F.relu(F.linear(z, head.hidden[0].weight, head.hidden[0].bias))
    return F.linear(z, head.linear.weight, head.linear.bias)


def ref_sgd(params):
    return torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=WD)


class RefReconBoost:
    """train.py's stage loop (``variant="authors"``) or ReconBoost_trainer (``variant="bb"``)."""

    def __init__(self, model, mods, variant, e1, e2, w1=5.0, w2=1.0, alpha=0.5):
        self.model, self.mods, self.variant = model, mods, variant
        self.e1, self.e2, self.w1, self.w2, self.alpha = e1, e2, w1, w2, alpha
        self.ensemble = list(mods) if variant == "bb" else []  # DynamicNet.models_name
        self.shared_opt = ref_sgd(model.parameters()) if variant == "bb" else None
        self.c0 = 0.3  # the authors' init_model(): random.random(); any constant, its softmax over 1 column is 1

    def learner_params(self, m):
        return list(self.model.encoders[m].parameters()) + list(self.model.head.parameters())

    def stage(self, s, batches):
        """Runs stage s step by step, yielding (modality or "ensemble", loss) after each update."""
        model, mods = self.model, self.mods
        m = mods[s % len(mods)]  # schedule_model, fixed mode
        pre = mods[(mods.index(m) - 1) % len(mods)]
        beta_param = model.head.boost_rate
        opt = self.shared_opt or ref_sgd([p for p in self.learner_params(m) if p is not beta_param])
        for _ in range(self.e1):
            for inputs, y in batches:
                with torch.no_grad():
                    others = [k for k in self.ensemble if k != m]
                    if others:
                        out_join = beta_param * sum(ref_f(model, model.encoders[k](inputs[k])) for k in others)
                    else:
                        out_join = torch.tensor(self.c0).view(-1, 1).expand(len(y), 1)
                out_obj = ref_f(model, model.encoders[m](inputs[m]))
                target = torch.zeros(len(y), CLASSES).scatter_(1, y.view(-1, 1), 1)
                boosting = -self.w1 * (target * out_obj.log_softmax(1)).mean(-1) \
                    + self.w2 * (target * out_join.detach().softmax(1) * out_obj.log_softmax(1)).mean(-1)
                model.zero_grad(set_to_none=True)
                ga_off = s == 0 if self.variant == "authors" else s < len(mods)  # bb: its epoch 0
                if ga_off:
                    loss = boosting
                else:
                    pre_out = ref_f(model, model.encoders[pre](inputs[pre]))
                    loss = boosting + self.alpha * F.mse_loss(out_obj.detach().softmax(1), pre_out.detach().softmax(1))
                loss.mean().backward()
                opt.step()
                if self.shared_opt is not None:
                    opt.zero_grad(set_to_none=True)
                yield m, float(loss.detach().mean())
        if m in self.ensemble:  # DynamicNet.add: replace, at the end
            self.ensemble.remove(m)
        self.ensemble.append(m)
        params = [p for k in self.ensemble for p in model.encoders[k].parameters()] + list(model.head.parameters())
        opt = self.shared_opt or ref_sgd(params)
        for _ in range(self.e2):
            for inputs, y in batches:
                out = beta_param * sum(ref_f(model, model.encoders[k](inputs[k])) for k in self.ensemble)
                loss = F.cross_entropy(out, y)
                model.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if self.shared_opt is not None:
                    opt.zero_grad(set_to_none=True)
                yield "ensemble", float(loss.detach())


# ----------------------------------------------------------------------------- mmvid


def mmvid_parts(mods, args=None, fusion_args=None):
    cfg = make_cfg(mods, fusion="shared", balance="reconboost", balance_args=args)
    cfg.model.fusion_args = {"combine": "boost", **(fusion_args or {})}
    cfg.data.batch_size = BATCH
    model = make_model(cfg)
    bal = BALANCERS.build("reconboost", cfg.balance, mods)
    bal.check(cfg.model, "none")
    return cfg, model, bal


VARIANTS = {
    "defaults=authors": ({}, {}, "authors", 4, 4),
    "authors-short-stages+mlp-head": ({"epochs_per_stage": 1, "correct_epochs": 2}, {"hidden": 8}, "authors", 1, 2),
    "balancebenchmark": ({"epochs_per_stage": 1, "correct_epochs": 1, "ensemble": "full", "optimizer": "kept",
                          "ga_from": None}, {"boost_rate": 0.01}, "bb", 1, 1),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mods", [AV, AVF], ids=["2mod", "3mod"])
def test_stages_match_the_reference(variant, mods):
    args, fusion_args, ref_variant, e1, e2 = VARIANTS[variant]
    args = {k: (len(mods) if k == "ga_from" else v) for k, v in args.items()}
    batches = [make_batch(mods, BATCH, seed=s) for s in range(N_BATCHES)]
    cfg, model, bal = mmvid_parts(mods, args, fusion_args)
    ref_model = copy.deepcopy(model)
    ctx = make_ctx(cfg, model, ref_sgd(model.parameters()), batches)
    bal.setup(model, ctx)
    ref = RefReconBoost(ref_model, mods, ref_variant, e1, e2)
    aug = AUGMENTS.build("none", cfg.augment, mods)
    model.train(), ref_model.train()
    n_stages = len(mods) + 1  # every modality once, then the first again (with the GA term)
    epoch = 0
    for s in range(n_stages):
        expected = ref.stage(s, batches)  # a generator: in lockstep with mmvid
        for _ in range(e1 + e2):
            ctx.epoch = epoch
            bal.on_epoch_start(ctx)
            stage, phase, m = bal.schedule(epoch)
            for step, (inputs, y) in enumerate(batches):
                _, loss = train_step(model, aug, bal, ctx, inputs, y)
                ref_m, ref_loss = next(expected)
                where = f"stage {s} epoch {epoch} step {step}"
                assert stage == s and (m if phase == 1 else "ensemble") == ref_m, where
                assert float(loss.detach()) == pytest.approx(ref_loss, rel=1e-5, abs=1e-7), where
                for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
                    torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda t: f"{n} {where}: {t}")
            epoch += 1
    assert set(bal.log()) >= {"reconboost_ensemble_loss", "reconboost_beta", "reconboost_phase"}


@pytest.mark.parametrize("fusion_args", [{}, {"hidden": 8}, {"boost_rate": 0.01}], ids=["linear", "mlp", "bb-beta"])
def test_test_time_output_is_the_ensemble(fusion_args):
    """The authors' test(): softmax(boost_rate * sum_m f(z_m)); mmvid's fused logits are the same ensemble."""
    _, model, _ = mmvid_parts(AVF, fusion_args=fusion_args)
    model.eval()
    inputs, _ = make_batch(AVF, 5, seed=3)
    with torch.no_grad():
        out = model(inputs)
        expected = model.head.boost_rate * sum(ref_f(model, model.encoders[m](inputs[m])) for m in AVF)
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-6)
    assert float(model.head.boost_rate.detach()) == pytest.approx(fusion_args.get("boost_rate", 1.0))


def test_the_reconcilement_term_changes_the_step():
    """weight2 = 0 (no reconcilement) moves the learner differently (the comparison above is not blind to q)."""
    mods = AV
    batches = [make_batch(mods, BATCH, seed=s) for s in range(2)]
    weights = []
    for args in ({}, {"weight2": 0.0}):
        cfg, model, bal = mmvid_parts(mods, {**args, "ensemble": "full"})
        ctx = make_ctx(cfg, model, ref_sgd(model.parameters()), batches)
        bal.on_epoch_start(ctx)
        for inputs, y in batches:
            train_step(model, AUGMENTS.build("none", cfg.augment, mods), bal, ctx, inputs, y)
        weights.append(model.head.linear.weight.detach().clone())
    assert not torch.allclose(weights[0], weights[1], atol=1e-5)


def test_bad_settings_are_one_line():
    cfg = make_cfg(AV, fusion="shared", balance="reconboost")
    with pytest.raises(MmvidError, match="combine: boost"):
        BALANCERS.build("reconboost", cfg.balance, AV).check(cfg.model, "none")
    with pytest.raises(MmvidError, match="balance.args.ensemble"):
        BALANCERS.build("reconboost", make_cfg(AV, balance="reconboost", balance_args={"ensemble": "x"}).balance, AV)
    with pytest.raises(MmvidError, match="epochs_per_stage"):
        BALANCERS.build("reconboost", make_cfg(AV, balance="reconboost", balance_args={"epochs_per_stage": 0}).balance, AV)
    bad = make_cfg(AV, fusion="shared")
    bad.model.fusion_args = {"hidden": 8}
    with pytest.raises(MmvidError, match="hidden"):
        make_model(bad)
