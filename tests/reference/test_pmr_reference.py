"""PMR against its reference, fanyunfeng-bit/Modal-Imbalance-PMR ``main_Prototype_grad.py``
(``--modulation Proto``), re-implemented below from reading it: ``EU_dist`` (an element-wise loop of
sqrt(dot(x - c, x - c))), ``calculate_prototype`` (eval mode, no gradient, per-sample class sums over the
first ``all_num // 10`` batches of the training loader, EMA with ``momentum_coef`` 0.2 when ``epoch > 0``)
and the loss of ``train_epoch`` (per-sample loops of true-class softmax sums, ``ratio_a_p = s_a / s_v``,
``alpha`` on the weak modality's prototype CE, ``modulation_starts <= epoch <= modulation_ends``).

mmvid's balancer runs with its *default* arguments: the defaults are the reference's.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _methods_util import attach, make_batch, make_cfg, make_model

from mmvid.balance.base import modality_scores
from mmvid.balance.pmr import pmr_coefficients, prototype_logits
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]
N, BATCH, CLASSES = 40, 4, 4


# ----------------------------------------------------------------------------- the reference, re-implemented


def ref_eu_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    d = torch.zeros(x.shape[0], c.shape[0])
    for i in range(x.shape[0]):
        for j in range(c.shape[0]):
            diff = x[i] - c[j]
            d[i, j] = torch.sqrt(torch.dot(diff, diff))
    return d


def ref_prototypes(model, batches, all_num: int, epoch: int, old=None):
    """calculate_prototype: sums over the first all_num // 10 batches (at least one), / count, EMA if epoch > 0."""
    model.eval()
    protos = {m: torch.zeros(CLASSES, model.encoders[m].output_dim) for m in AV}
    count = [0] * CLASSES
    with torch.no_grad():
        seen = 0
        for inputs, label in batches:
            feats = model(inputs).features
            for i, lab in enumerate(label.tolist()):
                count[lab] += 1
                for m in AV:
                    protos[m][lab] += feats[m][i]
            seen += 1
            if seen >= all_num // 10:
                break
    for m in AV:
        for k in range(CLASSES):
            protos[m][k] /= count[k]
    if epoch > 0:
        protos = {m: 0.8 * protos[m] + 0.2 * old[m] for m in AV}
    return protos


def ref_loss(out, label, protos, alpha: float = 1.0, epoch: int = 0, starts: int = 0, ends: int = 100):
    """train_epoch's loss for --modulation Proto: (loss, beta (audio coef), lam (visual coef), s_a, s_v)."""
    a, v = out.features["audio"], out.features["video"]
    audio_sim, visual_sim = -ref_eu_dist(a, protos["audio"]), -ref_eu_dist(v, protos["video"])
    ce = F.cross_entropy(out.logits, label)
    if not starts <= epoch <= ends:
        return ce, 0, 0, None, None
    s_a = sum(F.softmax(audio_sim, 1)[i][label[i]] for i in range(len(label)))
    s_v = sum(F.softmax(visual_sim, 1)[i][label[i]] for i in range(len(label)))
    ratio = s_a / s_v
    beta, lam = (0, alpha) if ratio > 1 else (alpha, 0) if ratio < 1 else (0, 0)
    loss = ce + beta * F.cross_entropy(audio_sim, label) + lam * F.cross_entropy(visual_sim, label)
    return loss, beta, lam, float(s_a.detach()), float(s_v.detach())


# ----------------------------------------------------------------------------- set-up


def setup_run():
    """Tiny model, a 40-clip 'training set' served in batches of 4 by ctx.loader (which records its rows)."""
    cfg = make_cfg(AV, balance="pmr")
    cfg.data.batch_size = BATCH
    model = make_model(cfg)
    data, labels = make_batch(AV, N, seed=1)
    bal = BALANCERS.build("pmr", cfg.balance, AV)
    ctx = attach(cfg, model, AUGMENTS.build("none", cfg.augment, AV), bal, [])
    ctx.splits = SimpleNamespace(train=np.arange(N), val=np.arange(0), test=np.arange(0))
    asked = []

    def loader(rows, train=False, shuffle=False):
        rows = list(rows)
        asked.append(rows)
        return [({m: data[m][rows[i:i + BATCH]] for m in AV}, labels[rows[i:i + BATCH]]) for i in range(0, len(rows), BATCH)]

    ctx.loader = loader
    return cfg, model, bal, ctx, (data, labels), asked


def ref_batches(data, labels, first_rows):
    """The reference's shuffled training loader, starting with the rows mmvid sampled."""
    rest = [r for r in range(N) if r not in set(first_rows)]
    order = list(first_rows) + rest
    return [({m: data[m][order[i:i + BATCH]] for m in AV}, labels[order[i:i + BATCH]]) for i in range(0, N, BATCH)]


# ----------------------------------------------------------------------------- tests


def test_prototypes_subset_and_ema_match_the_reference_over_four_epochs():
    _, model, bal, ctx, (data, labels), asked = setup_run()
    all_num = N // BATCH
    ref = None
    for epoch in range(4):
        ctx.epoch = epoch
        bal.on_epoch_start(ctx)
        rows = asked[-1]
        assert len(rows) == max(1, all_num // 10) * BATCH, \
            f"epoch {epoch}: prototypes from {len(rows)} of {N} clips; the reference uses {max(1, all_num // 10) * BATCH}"
        # The reference's call for these weights: epoch 0 before training, then calculate_prototype(epoch - 1).
        ref = ref_prototypes(model, ref_batches(data, labels, rows), all_num, max(epoch - 1, 0), ref)
        for m in AV:
            present = torch.isfinite(ref[m]).all(1)  # the reference's absent classes are NaN (0 / 0)
            err = float((bal.protos[m][present] - ref[m][present]).abs().max())
            assert err < 1e-5, f"epoch {epoch} {m}: prototypes differ from the reference by {err:.4g}"
        with torch.no_grad():  # a training epoch changes the weights
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))


def test_scores_coefficients_and_loss_match_the_reference():
    _, model, bal, ctx, _, _ = setup_run()
    bal.on_epoch_start(ctx)
    torch.manual_seed(3)
    protos = {m: bal.protos[m] + 0.3 * torch.randn_like(bal.protos[m]) for m in AV}  # a clear imbalance
    bal.protos = protos
    inputs, y = make_batch(AV, 8, seed=5)
    model.train()
    for epoch in (0, 50, 100, 101):
        ctx.epoch = epoch
        bal.on_epoch_start(ctx)
        bal.protos = protos
        out = model(inputs)
        base = F.cross_entropy(out.logits, y)
        total = bal.loss(base, out, inputs, y, ctx)
        loss, beta, lam, s_a, s_v = ref_loss(out, y, protos, epoch=epoch)
        assert float(total) == pytest.approx(float(loss), rel=1e-6, abs=1e-6), \
            f"epoch {epoch}: loss {float(total):.6f}, reference {float(loss):.6f} (differ by {float(total - loss):.4g})"
        logged = bal.log()
        assert (logged["pmr_coeff_audio"], logged["pmr_coeff_video"]) == pytest.approx((beta, lam)), \
            f"epoch {epoch}: coefficients (audio, video) {logged}, reference ({beta}, {lam})"
        if s_a is not None:
            logits = {m: prototype_logits(out.features[m].detach(), protos[m]) for m in AV}
            scores = modality_scores(logits, out, y, ctx)
            assert (scores["audio"], scores["video"]) == pytest.approx((s_a, s_v), rel=1e-6)
            for m in AV:
                assert torch.allclose(logits[m], -ref_eu_dist(out.features[m].detach(), protos[m]), atol=1e-6)


def test_paper_ratio_option_is_alpha_times_dominant_over_weak_minus_one():
    """The paper's modulation coefficient beta = alpha (rho - 1), rho = s_dominant / s_weak (``scale: ratio``)."""
    c = pmr_coefficients({"audio": 6.0, "video": 2.0}, alpha=0.5, scale="ratio")
    assert c == {"audio": 0.0, "video": pytest.approx(0.5 * (6.0 / 2.0 - 1))}
    assert pmr_coefficients({"audio": 6.0, "video": 2.0}, alpha=0.5) == {"audio": 0.0, "video": 0.5}
