"""Greedy (balanced multimodal learning) against its reference, nyukat/greedy_multimodal_learning,
re-implemented below from reading it:

* ``src/balanced_mmtm.py`` ``MMTM_mitigate`` (not SE-only, no shared weights): squeeze = spatial means of
  both maps, concatenated -> ReLU(fc_squeeze) -> sigmoid(fc_visual / fc_skeleton); the running averages
  (mean_B e + avg * step) / (step + 1) are updated in every forward *before* use, both from the first
  modality's excitation; in curation mode the cared modality's scale is its running average.
* ``src/model.py`` ``MMTM_MVCNN``: blocks after layer2, layer3, layer4; output = mean of the two branch heads;
  ``train.py`` ``blend_loss``: the sum of the branch CEs.
* ``src/callbacks.py`` ``Bias_Mitigation_Strong`` with ``configs/training_guided.gin`` (epsilon 0.01, window 5,
  starting_epoch 2 counted from 1): cumulative sums of ||g||^2/||w||^2 per bypass / main group (grouped by
  parameter name), d = log10(M_b0 / M_m0) - log10(M_b1 / M_m1), and its curation state machine.

mmvid's modalities (audio, video) stand for the reference's (view 0 / "visual", view 1 / "skeleton").
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _methods_util import attach, make_batch, make_cfg, make_model

from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]


# ----------------------------------------------------------------------------- the reference, re-implemented


class RefMMTM:
    """MMTM_mitigate's computation on (B, C, H, W) maps with the given layers and its own running state."""

    def __init__(self, fc_squeeze, fc_visual, fc_skeleton, dim):
        self.fc_squeeze, self.fc_visual, self.fc_skeleton = fc_squeeze, fc_visual, fc_skeleton
        self.avg_visual, self.avg_skeleton, self.step = torch.zeros(dim), torch.zeros(dim), 0

    def __call__(self, visual, skeleton, curation_mode=False, caring_modality=0):
        squeeze = torch.cat([visual.view(*visual.shape[:2], -1).mean(-1), skeleton.view(*skeleton.shape[:2], -1).mean(-1)], 1)
        excitation = torch.relu(self.fc_squeeze(squeeze))
        vis_out, sk_out = torch.sigmoid(self.fc_visual(excitation)), torch.sigmoid(self.fc_skeleton(excitation))
        self.avg_visual = (vis_out.mean(0) + self.avg_visual * self.step).detach() / (self.step + 1)
        self.avg_skeleton = (vis_out.mean(0) + self.avg_skeleton * self.step).detach() / (self.step + 1)
        self.step += 1
        if curation_mode and caring_modality == 0:
            vis_out = torch.stack(vis_out.shape[0] * [self.avg_visual])
        if curation_mode and caring_modality == 1:
            sk_out = torch.stack(sk_out.shape[0] * [self.avg_skeleton])
        return visual * vis_out[:, :, None, None], skeleton * sk_out[:, :, None, None]


def ref_network_logits(model, inputs):
    """MMTM_MVCNN.forward on single-frame inputs with mmvid's stages, blocks and heads: (mean logits, [x0, x1])."""
    enc = model.encoders
    x = {m: enc[m].run_stage(0, inputs[m] if inputs[m].dim() == 4 else inputs[m][:, 0]) for m in AV}
    for i in (2, 3, 4):
        x = {m: enc[m].run_stage(i - 1, x[m]) for m in AV}
        blk = model.fusion.blocks[str(i)]
        ref = RefMMTM(blk.squeeze, blk.excite["audio"], blk.excite["video"], blk.channels["audio"])
        x["audio"], x["video"] = ref(x["audio"], x["video"])
    branch = [model.head.heads[m](x[m].mean((2, 3))) for m in AV]
    return (branch[0] + branch[1]) / 2, branch


def ref_groups(model):
    """compute_BDR's grouping by name: 'mmtm' parameters are bypass (a modality's own excitation layer, or
    shared by both), the branch nets (encoder + its fc head) are main."""
    bypass, main = {m: [] for m in AV}, {m: [] for m in AV}
    for name, p in model.named_parameters():
        if name.startswith("fusion."):
            owners = [m for m in AV if f".{m}." in name] or AV
            for m in owners:
                bypass[m].append(p)
        else:
            for m in AV:
                if name.startswith(f"encoders.{m}.") or name.startswith(f"head.heads.{m}."):
                    main[m].append(p)
    return bypass, main


class RefCallback:
    """Bias_Mitigation_Strong: on_epoch_begin / on_backward_end and compute_BDR."""

    def __init__(self, epsilon=0.01, window=5, starting_epoch=2):
        self.epsilon, self.window, self.starting_epoch = epsilon, window, starting_epoch
        self.M = {"b0": 0.0, "b1": 0.0, "m0": 0.0, "m1": 0.0}
        self.curation_mode, self.caring_modality, self.unlock, self.d = False, None, False, None

    def on_epoch_begin(self, epoch_from_1):
        if epoch_from_1 >= self.starting_epoch:
            self.unlock = True

    def compute_bdr(self, model):
        bypass, main = ref_groups(model)

        def ratio(ps):
            return sum((p.grad ** 2).sum().item() for p in ps) / sum((p ** 2).sum().item() for p in ps)

        self.M["b0"] += ratio(bypass["audio"])
        self.M["b1"] += ratio(bypass["video"])
        self.M["m0"] += ratio(main["audio"])
        self.M["m1"] += ratio(main["video"])
        return math.log10(self.M["b0"] / self.M["m0"]) - math.log10(self.M["b1"] / self.M["m1"])

    def on_backward_end(self, model):
        if self.unlock:
            if not self.curation_mode:
                self.d = self.compute_bdr(model)
                if abs(self.d) > self.epsilon:
                    self.curation_mode, self.curation_step = True, 0
                    self.caring_modality = 1 if self.d < 0 else 0
                else:
                    self.curation_mode, self.caring_modality = False, 0
            else:
                self.curation_step += 1
                if self.curation_step == self.window:
                    self.curation_mode = False
        else:
            self.d = self.compute_bdr(model)
            self.curation_mode, self.caring_modality = False, 0


# ----------------------------------------------------------------------------- set-up


def setup_run(balance_args=None):
    cfg = make_cfg(AV, fusion="mmtm", balance="greedy", balance_args=balance_args)
    model = make_model(cfg)
    aug = AUGMENTS.build("none", cfg.augment, AV)
    bal = BALANCERS.build("greedy", cfg.balance, AV)
    ctx = attach(cfg, model, aug, bal, [])
    return model, aug, bal, ctx


def run_steps(model, aug, bal, ctx, epochs_per_step, seed=0):
    """The engine's step order with the reference callback alongside, on the same gradients.
    Returns per step (mmvid care, reference care, mmvid d, reference d)."""
    ref, rows = RefCallback(), []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # the reference's training.gin optimiser
    ctx.optimizer = opt
    for step, epoch in enumerate(epochs_per_step):
        ctx.epoch = epoch
        bal.on_epoch_start(ctx)  # also empties the per-epoch log, so log() is this step's value
        ref.on_epoch_begin(epoch + 1)
        model.train()
        inputs, y = make_batch(AV, 6, seed=seed + step)
        inputs, y = bal.on_batch(inputs, y, ctx)
        care = model.fusion.care
        ref_care = AV[ref.caring_modality] if ref.curation_mode else None
        out, loss = aug.compute(model, inputs, y, ctx)
        loss = bal.loss(loss, out, inputs, y, ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ref.on_backward_end(model)
        bal.after_backward(model, out, y, ctx)
        opt.step()
        rows.append((care, ref_care, bal.log().get("greedy_d"), ref.d))
    return rows


# ----------------------------------------------------------------------------- tests


def test_mmtm_block_matches_the_reference_in_normal_and_curation_mode():
    from mmvid.balance.mmtm import MMTMBlock

    torch.manual_seed(0)
    block = MMTMBlock({"audio": 8, "video": 8}, ratio=4)
    block.average_source = "first"  # the reference feeds both running averages from the first modality
    assert block.squeeze.out_features == int(2 * 16 / 4)
    ref = RefMMTM(block.squeeze, block.excite["audio"], block.excite["video"], 8)
    frames = {"audio": 1, "video": 1}
    for step, (curation, caring) in enumerate([(False, 0), (False, 0), (True, 0), (True, 1), (False, 0), (True, 1)]):
        maps = {m: torch.randn(3, 8, 4, 5) for m in AV}
        care = AV[caring] if curation else None
        out, e = block(maps, frames, care)
        block.update({m: e[m].mean(0) for m in AV})
        ra, rv = ref(maps["audio"], maps["video"], curation, caring)
        err = max(float((out["audio"] - ra).detach().abs().max()), float((out["video"] - rv).detach().abs().max()))
        assert err < 1e-6, f"step {step} (curation {curation}, caring {caring}): outputs differ by {err:.3g}"
    assert torch.allclose(block.running_video, ref.avg_skeleton, atol=1e-7)


def test_own_average_replaces_a_modality_by_its_own_running_excitation():
    from mmvid.balance.mmtm import MMTMBlock

    torch.manual_seed(1)
    block = MMTMBlock({"audio": 6, "video": 4}, ratio=4)
    maps = {"audio": torch.randn(5, 6, 3, 3), "video": torch.randn(5, 4, 3, 3)}
    _, e = block(maps, {"audio": 1, "video": 1})
    block.update({m: e[m].mean(0) for m in AV})
    out, e2 = block(maps, {"audio": 1, "video": 1}, care="video")
    expected = (e2["video"].mean(0) + e["video"].mean(0)) / 2
    assert torch.allclose(out["video"], maps["video"] * expected[None, :, None, None], atol=1e-6)
    assert torch.allclose(out["audio"], maps["audio"] * e2["audio"][:, :, None, None], atol=1e-6)


def test_mmtm_network_and_loss_match_the_reference_structure():
    model, aug, bal, ctx = setup_run()
    inputs, y = make_batch(AV, 4)
    inputs["video"] = inputs["video"][:, :1]  # the reference's views are single images
    model.eval()
    with torch.no_grad():
        out = model(inputs)
        logits, branch = ref_network_logits(model, inputs)
    assert sorted(model.fusion.blocks) == ["2", "3", "4"], "MMTM after stages 2, 3 and 4, as after layer2-4"
    assert torch.allclose(out.logits, logits, atol=1e-6)
    loss = bal.loss(F.cross_entropy(out.logits, y), out, inputs, y, ctx)
    assert float(loss) == pytest.approx(float(sum(F.cross_entropy(b, y) for b in branch)), rel=1e-6), "blend_loss"
    model.train()
    out = model(inputs)
    bal.loss(F.cross_entropy(out.logits, y), out, inputs, y, ctx).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient for {missing}"


def test_speeds_match_the_reference_over_six_steps():
    model, aug, bal, ctx = setup_run()
    rows = run_steps(model, aug, bal, ctx, [0] * 6)
    got, want = [r[2] for r in rows], [r[3] for r in rows]
    assert got == pytest.approx(want, rel=1e-4, abs=1e-6), \
        "d per step: mmvid " + ", ".join(f"{v:+.4f}" for v in got) + " | reference " + ", ".join(f"{v:+.4f}" for v in want)


def test_curation_decisions_match_the_reference():
    """Two locked steps in epoch 0, then twelve in epoch 1 (the reference's epoch 2): same care per step."""
    model, aug, bal, ctx = setup_run()
    rows = run_steps(model, aug, bal, ctx, [0, 0] + [1] * 12, seed=10)
    got, want = [r[0] for r in rows], [r[1] for r in rows]
    assert got == want, f"cared modality per step: mmvid {got}, reference {want}"
    assert any(c is not None for c in want), "the check must include curation steps"
    assert [r[2] for r in rows] == pytest.approx([r[3] for r in rows], rel=1e-4, abs=1e-6)
