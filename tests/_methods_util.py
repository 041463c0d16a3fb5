"""Shared helpers of the methods tests: tiny models, a stand-in for the engine's TrainContext, one step.

``train_step`` follows the order of the loop in :func:`mmvid.engine.loop.train` (data -> forward + loss ->
backward -> after_backward -> step) on hand-made tensors, so hooks can be checked without a cache.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from mmvid.config import TrainConfig
from mmvid.engine.checkpoints import model_from_checkpoint
from mmvid.models.classifier import MultimodalClassifier

SHAPES = {"audio": (1, 16, 16), "video": (2, 3, 16, 16), "flow": (2, 2, 16, 16)}
CLASSES = 4
WIDTH = 4  # small encoder: d = 8 * WIDTH = 32


def make_batch(modalities, b: int = 8, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(b, *SHAPES[m], generator=g) for m in modalities}
    return inputs, torch.arange(b) % CLASSES


def make_cfg(modalities, fusion="concat", augment="none", balance="none", balance_args=None, augment_args=None) -> TrainConfig:
    cfg = TrainConfig()
    cfg.data.modalities = list(modalities)
    cfg.model.encoder, cfg.model.width, cfg.model.fusion = "small", WIDTH, fusion
    cfg.augment.name, cfg.augment.args = augment, dict(augment_args or {})
    cfg.balance.name, cfg.balance.args = balance, dict(balance_args or {})
    return cfg


def make_model(cfg: TrainConfig) -> MultimodalClassifier:
    torch.manual_seed(0)
    return MultimodalClassifier(cfg.data.modalities, CLASSES, "small", WIDTH, cfg.model.fusion, cfg.model.calibrate,
                                cfg.model.fusion_args)


def save_teachers(modalities, folder: Path) -> dict[str, str]:
    """Checkpoints of untrained unimodal teachers (UMT needs their encoders' shapes): modality -> path."""
    paths = {}
    for m in modalities:
        cfg = make_cfg([m])
        torch.save({"config": cfg.to_dict(), "class_names": [f"c{i}" for i in range(CLASSES)],
                    "model": make_model(cfg).state_dict()}, folder / f"{m}.pt")
        paths[m] = str(folder / f"{m}.pt")
    return paths


def make_ctx(cfg: TrainConfig, model, optimizer, batches, run_dir: Path | None = None) -> SimpleNamespace:
    """The fields of TrainContext that hooks read; ``loader(rows)`` yields the given batches."""
    n = sum(len(y) for _, y in batches)
    return SimpleNamespace(
        cfg=cfg, model=model, optimizer=optimizer, scaler=None, device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(cfg.seed), modalities=cfg.data.modalities, num_classes=CLASSES,
        info=SimpleNamespace(class_names=[f"c{i}" for i in range(CLASSES)], path=None),
        splits=SimpleNamespace(train=np.arange(n), val=np.arange(n), test=np.arange(0)), run_dir=run_dir,
        epoch=0, step=0, focus=None, train_scores=None, val_losses=None, world_size=1, rank=0,
        all_reduce=lambda t: t, loader=lambda rows, train=False, shuffle=False: list(batches),
        train_companion=None, load_model=model_from_checkpoint)


def attach(cfg: TrainConfig, model, augment, balancer, batches, run_dir=None):
    """Build the optimizer and run the setup hooks as the engine does; returns the context."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx = make_ctx(cfg, model, opt, batches, run_dir)
    for extra in (balancer.setup(model, ctx), augment.setup(model, ctx)):
        if extra is not None:
            opt.add_param_group({"params": [p for p in extra.parameters() if p.requires_grad]})
    return ctx


def train_step(model, augment, balancer, ctx, inputs, y):
    """One step in the engine's order (one loss -> backward -> step per ``balancer.passes`` item, with
    ``ctx.focus`` set); returns (ModelOutput, loss: the single pass's, else the passes' mean)."""
    model.train()
    inputs, y = balancer.on_batch(inputs, y, ctx)
    out, base = augment.compute(model, inputs, y, ctx)
    losses = []
    for focus in balancer.passes(ctx):
        ctx.focus = focus
        loss = balancer.loss(base, out, inputs, y, ctx)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        balancer.after_backward(model, out, y, ctx)
        ctx.optimizer.step()
        losses.append(loss)
    ctx.focus = None
    ctx.step += 1
    return out, losses[0] if len(losses) == 1 else torch.stack([v.detach() for v in losses]).mean()
