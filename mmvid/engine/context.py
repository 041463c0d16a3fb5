"""What the hooks of balancers and augmentations see (:class:`TrainContext`), and everything one training step
touches (:class:`TrainingParts`, built once by :func:`mmvid.engine.loop.build_training`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmvid.config import TrainConfig
from mmvid.data.cache import CacheInfo
from mmvid.distributed.collectives import all_reduce_sum
from mmvid.engine.loaders import Splits, make_loader
from mmvid.models.classifier import MultimodalClassifier


@dataclass
class TrainContext:
    """What hooks may read (and, for optimizer / scaler, act on)."""

    cfg: TrainConfig
    model: MultimodalClassifier
    optimizer: torch.optim.Optimizer
    scaler: Any
    device: torch.device
    generator: torch.Generator  # seeded; shared by all ranks so mixing decisions agree
    modalities: list[str]
    num_classes: int
    info: CacheInfo
    splits: Splits
    run_dir: Path
    epoch: int = 0
    step: int = 0
    focus: Any = None  # the current item of ``balancer.passes`` (None outside a multi-pass step)
    train_scores: dict[str, dict[str, float]] | None = None  # per modality {"score", "correct", "n"} last epoch
    val_scores: dict[str, dict[str, float]] | None = None  # the same on the validation split
    val_losses: dict[str, float] | None = None
    world_size: int = 1
    rank: int = 0
    batch_intensity: torch.Tensor | None = None  # (B,) the step's intensity targets, when the augmentation reads them
    # The engine's services for a plug-in that needs runs of its own (e.g. unimodal teachers), so that plug-ins
    # never import the engine: ``train_companion(cfg, folder)`` trains ``cfg`` into ``folder`` with this loop
    # (resuming what is there) and returns the checkpoint to use (best, else last); ``load_model(checkpoint)``
    # rebuilds a checkpoint's model -> (model, its TrainConfig, the checkpoint dict).
    train_companion: Callable[[TrainConfig, Path], Path] | None = None
    load_model: Callable[[Path], tuple[MultimodalClassifier, TrainConfig, dict]] | None = None

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum across ranks (identity in one process)."""
        return all_reduce_sum(t, self.world_size, self.device)

    def loader(self, rows: np.ndarray, train: bool = False, shuffle: bool = False) -> DataLoader:
        return make_loader(self.info, rows, self.cfg, train=train, shuffle=shuffle)


@dataclass
class TrainingParts:
    """Everything one training step touches, built once by :func:`mmvid.engine.loop.build_training`."""

    ctx: TrainContext
    augment: Any
    balancer: Any
    balancer_modules: torch.nn.Module | None  # a balancer's own trainable modules (outside DDP)
    scheduler: Any
    net: torch.nn.Module  # what the step calls: the model, DDP-wrapped and/or compiled
    augment_modules: torch.nn.Module | None = None  # an augmentation's own trainable modules (outside DDP)
    aux: Any = None  # the auxiliary heads' loss term (mmvid.engine.step.AuxiliaryLoss), None when off

    def plugin_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters of the plug-ins' own modules (balancer's, then augmentation's)."""
        return [p for m in (self.balancer_modules, self.augment_modules) if m is not None for p in m.parameters()]
