"""Evaluation under a missing modality: the modality's input is zeroed (``zero``) or set to its
training-set mean (``mean``) before the encoders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmvid.data.cache import read_info
from mmvid.engine import evaluate_model, make_loader, model_from_checkpoint, pick_device
from mmvid.errors import MmvidError
from mmvid.evaluate import cache_for_run

MODALITY_ALIASES = {"audio": "audio", "video": "video", "rgb": "video", "frames": "video", "flow": "flow"}


def parse_modality(name: str, available: list[str]) -> str:
    m = MODALITY_ALIASES.get(name.lower())
    if m is None:
        raise MmvidError(f"unknown modality {name!r}; choose one of: audio, video, flow")
    if m not in available:
        raise MmvidError(f"the run has no {m} modality (it uses {', '.join(available)})")
    return m


def drop_transform(modality: str, fill: str, mean: torch.Tensor | None = None):
    def transform(inputs: dict[str, torch.Tensor], y: torch.Tensor) -> dict[str, torch.Tensor]:
        out = dict(inputs)
        x = inputs[modality]
        out[modality] = torch.zeros_like(x) if fill == "zero" else mean.to(x.device, x.dtype).expand_as(x).clone()
        return out

    return transform


def training_mean(model, info, rows, cfg, modality: str) -> torch.Tensor:
    loader = make_loader(info, rows, cfg, train=False)
    total, n = None, 0
    for inputs, _ in loader:
        x = inputs[modality].double()
        total = x.sum(0) if total is None else total + x.sum(0)
        n += x.shape[0]
    return (total / max(n, 1)).float()


def drop_modality(run: Path, modality: str, fill: str = "zero", split: str = "test", device: str = "auto") -> dict[str, Any]:
    model, cfg, ck = model_from_checkpoint(run)
    m = parse_modality(modality, model.modalities)
    if fill not in ("zero", "mean"):
        raise MmvidError(f"--fill {fill!r} is not valid; choose zero or mean")
    info = read_info(cache_for_run(ck))
    rows = np.asarray(ck["splits"][split])
    dev = pick_device(device)
    model.to(dev)
    loader = make_loader(info, rows, cfg, train=False)
    mean = training_mean(model, info, np.asarray(ck["splits"]["train"]), cfg, m) if fill == "mean" else None
    clean = evaluate_model(model, loader, dev)
    dropped = evaluate_model(model, loader, dev, transform=drop_transform(m, fill, mean))
    return {"run": str(run), "condition": f"drop {m} ({fill})", "clean_acc": clean.acc, "acc": dropped.acc}
