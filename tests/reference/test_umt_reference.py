"""UMT against its reference, GeWu-Lab/BalanceBenchmark ``balancemm/trainer/UMT_trainer.py``
(``UMTTrainer.training_step``), re-implemented below from reading it: one unimodal model per modality
loaded from its checkpoint, run under ``torch.no_grad()`` and never put in eval mode (its BatchNorm
normalises with the batch's statistics); loss = CE(fused output, y) + alpha * sum_m
MSELoss(teacher_m's pooled encoder feature, the student's pooled encoder feature of m), inside the
modulation window (0..80 in ``configs/trainer_config.yaml``, which spans its 70 epochs), alpha = 1 there.
No public code of Du et al. was found; METHODS.md's beta = 10 stays mmvid's default.

Identical tiny models (teachers perturbed away from the student's initialisation), one fixed batch.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _methods_util import CLASSES, attach, make_batch, make_cfg, make_model

from mmvid.errors import MmvidError
from mmvid.models.classifier import MultimodalClassifier
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]


# ----------------------------------------------------------------------------- the reference, re-implemented


def ref_umt_loss(student, teachers: dict, inputs, y, alpha: float) -> torch.Tensor:
    """training_step: CE on the fused output, plus alpha * MSE per modality between the frozen teacher's
    encoder feature (train mode, no grad) and the student's encoder feature."""
    out = student(inputs)
    loss = F.cross_entropy(out.logits, y)
    for m, teacher in teachers.items():
        teacher.train()  # the reference never calls eval() on loaded_model
        with torch.no_grad():
            target = teacher.encoders[m](inputs[m])
        loss = loss + alpha * F.mse_loss(target, out.features[m])
    return loss


# ----------------------------------------------------------------------------- set-up


def save_perturbed_teachers(folder, seed=1) -> dict[str, str]:
    """Teacher checkpoints whose weights and BatchNorm statistics differ from the student's."""
    g = torch.Generator().manual_seed(seed)
    paths = {}
    for m in AV:
        cfg = make_cfg([m])
        model = make_model(cfg)
        with torch.no_grad():
            for t in model.state_dict().values():  # shares storage with the model
                if t.is_floating_point():
                    t.add_(0.1 * torch.randn(t.shape, generator=g))
                    if t.dim() == 1:
                        t.abs_()  # BatchNorm scales and running variances stay positive
        torch.save({"config": cfg.to_dict(), "class_names": [f"c{i}" for i in range(CLASSES)],
                    "model": model.state_dict()}, folder / f"{m}.pt")
        paths[m] = str(folder / f"{m}.pt")
    return paths


def ref_teachers(paths) -> dict[str, MultimodalClassifier]:
    teachers = {}
    for m, p in paths.items():
        net = make_model(make_cfg([m]))
        net.load_state_dict(torch.load(p, weights_only=True)["model"])
        teachers[m] = net
    return teachers


def setup(tmp_path, **args):
    paths = save_perturbed_teachers(tmp_path)
    cfg = make_cfg(AV, balance="umt", balance_args={"teachers": paths, **args})
    model = make_model(cfg)
    inputs, y = make_batch(AV, 8, seed=3)
    bal = BALANCERS.build("umt", cfg.balance, AV)
    bal.check(cfg.model, "none")
    attach_ctx = attach(cfg, model, AUGMENTS.build("none", cfg.augment, AV), bal, [(inputs, y)])
    return model, bal, attach_ctx, inputs, y, paths


def mmvid_loss(model, bal, ctx, inputs, y):
    model.train()
    out = model(inputs)
    return bal.loss(F.cross_entropy(out.logits, y), out, inputs, y, ctx)


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("beta", [1.0, 10.0])
def test_loss_and_gradients_equal_the_reference_with_teacher_mode_train(tmp_path, beta):
    model, bal, ctx, inputs, y, paths = setup(tmp_path, teacher_mode="train", beta=beta)
    ref_model = copy.deepcopy(model)
    ref = ref_umt_loss(ref_model, ref_teachers(paths), inputs, y, alpha=beta)
    mine = mmvid_loss(model, bal, ctx, inputs, y)
    assert float(mine.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    mine.backward()
    ref.backward()
    for (n, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-8), n
    assert all(p.grad is None and not p.requires_grad for p in bal.teachers.parameters()), "teachers are frozen"


def test_default_eval_teachers_differ_from_the_reference_by_the_batchnorm_statistics(tmp_path):
    """mmvid's default: frozen teachers in eval mode (stored running statistics); the distillation targets,
    and so the loss, differ from the reference's batch-statistics targets."""
    model, bal, ctx, inputs, y, paths = setup(tmp_path)
    ref_model = copy.deepcopy(model)
    ref_train = ref_umt_loss(ref_model, ref_teachers(paths), inputs, y, alpha=10.0)
    mine = mmvid_loss(model, bal, ctx, inputs, y)
    assert not bal.teachers.training
    teachers = ref_teachers(paths)
    out = ref_model(inputs)
    with torch.no_grad():
        targets = {m: teachers[m].eval().encoders[m](inputs[m]) for m in AV}
    expected = F.cross_entropy(out.logits, y) + 10.0 * sum(F.mse_loss(targets[m], out.features[m]) for m in AV)
    assert float(mine.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert abs(float(mine.detach()) - float(ref_train.detach())) > 1e-3


def test_bad_teacher_mode_is_one_clear_error():
    cfg = make_cfg(AV, balance="umt", balance_args={"teacher_mode": "frozen"})
    with pytest.raises(MmvidError, match="balance.args.teacher_mode"):
        BALANCERS.build("umt", cfg.balance, AV)
