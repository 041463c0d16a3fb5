"""Uni-Modal Teacher, UMT (Du et al. 2021): distil frozen unimodal teachers into the multimodal encoders."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmvid.balance.base import Balancer, unwrap
from mmvid.errors import MmvidError
from mmvid.measures import training_mode
from mmvid.registry import BALANCERS
from mmvid.schema import spec


def teacher_config(cfg, modality: str, epochs: int):
    """The run config of modality m's teacher: the same encoder and optimiser, one modality, plain training."""
    t = copy.deepcopy(cfg)
    t.data.modalities = [modality]
    t.model.fusion, t.model.calibrate, t.model.fusion_args = "concat", False, {}
    t.augment.name, t.balance.name, t.balance.args = "none", "none", {}
    t.epochs, t.gpus, t.run_name = epochs, 1, None
    return t


TEACHER_MODES = ("eval", "train")  # eval: frozen BatchNorm statistics; train: batch statistics (BalanceBenchmark)


@BALANCERS.register("umt", doc="UMT: distil frozen unimodal teachers into the encoders (beta * MSE).")
class UniModalTeacher(Balancer):
    """UMT: loss = L + beta sum_m MSE(phi_m^teacher(x_m), z_m), beta = 10 (``balance.args.beta``).
    Teachers come from ``balance.args.teachers`` ({modality: run folder or checkpoint}) or, when absent, are
    trained first inside the same command by :func:`mmvid.engine.loop.train` (one modality, ``teacher_epochs``,
    default = epochs) into <run>/teachers/<modality> (resumable). The teacher sees the same (mixed) input
    as the student, and feature-stage mixing is applied to its features too. The student features are
    those the fusion receives (after calibration when it is on). ``teacher_mode``: ``eval`` (default, frozen
    teachers with their stored BatchNorm statistics) or ``train`` (BatchNorm normalises with the batch's
    statistics, as BalanceBenchmark's UMT trainer, which never calls ``eval()`` on its teachers)."""

    @dataclass
    class Settings:
        beta: float = spec(10.0, ge=0.0, le=1e6, help="weight of the distillation loss", ref="BalanceBenchmark UMT_trainer.py (its config: 1)")
        teachers: dict[str, str] | None = spec(None, help="modality -> unimodal teacher checkpoint (none: trained first)",
                                               ref="")
        teacher_epochs: int | None = spec(None, ge=1, le=1_000_000, help="epochs of each teacher trained first; none: the run's",
                                          ref="")
        teacher_mode: str = spec("eval", choices=TEACHER_MODES, help="teachers with frozen BatchNorm statistics (eval) or batch ones (train)",
                                 ref="BalanceBenchmark UMT_trainer.py (train)")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.beta = self.settings.beta
        self.paths: dict[str, str] = {m: str(p) for m, p in (self.settings.teachers or {}).items()}
        self.teacher_epochs = self.settings.teacher_epochs
        self.teacher_mode = self.settings.teacher_mode
        self.teachers: nn.ModuleDict | None = None

    def check(self, model_cfg, augment_name: str) -> None:
        super().check(model_cfg, augment_name)
        unknown = [m for m in self.paths if m not in self.modalities]
        if unknown:
            raise MmvidError(f"balance.args.teachers names {unknown}, which are not in data.modalities {self.modalities}")

    def _teacher_checkpoint(self, m: str, ctx) -> Path:
        """A given teacher's checkpoint, or one trained now with the run's own loop (ctx.train_companion)."""
        if m in self.paths:
            return Path(self.paths[m])
        epochs = int(self.teacher_epochs or ctx.cfg.epochs)
        return ctx.train_companion(teacher_config(ctx.cfg, m, epochs), ctx.run_dir / "teachers" / m)

    def setup(self, model, ctx):
        net = unwrap(model)
        teachers = {}
        for m in self.modalities:
            path = self._teacher_checkpoint(m, ctx)
            teacher, tcfg, _ = ctx.load_model(path)
            if m not in teacher.modalities or teacher.encoders[m].output_dim != net.encoders[m].output_dim:
                raise MmvidError(f"teacher {path} has no {m} encoder of size {net.encoders[m].output_dim}; "
                                 f"train it with the same model.encoder / model.width and data.modalities [{m}]")
            teachers[m] = teacher.encoders[m]
            self.paths[m] = str(path)
        self.teachers = nn.ModuleDict(teachers).to(ctx.device).eval().requires_grad_(False)
        return None


    def loss(self, loss, out, inputs, y, ctx):
        mix = out.mix
        # parameters stay frozen either way; the teachers are back in eval mode after the step
        with training_mode(self.teacher_mode == "train", self.teachers), torch.no_grad():
            x = mix.apply(inputs) if mix is not None and mix.stage == "input" else inputs
            target = {m: self.teachers[m](x[m]).float() for m in self.modalities}
            if mix is not None and mix.stage == "feature":
                target = mix.apply(target)
        dist = {m: F.mse_loss(out.features[m].float(), target[m]) for m in self.modalities}
        self.stats.add({f"umt_mse_{m}": float(v.detach()) for m, v in dist.items()})
        return loss + self.beta * sum(dist.values())


    def state_dict(self) -> dict[str, Any]:
        return {"teachers": dict(self.paths)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
