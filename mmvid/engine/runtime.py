"""Where and how a run computes: the device, mixed precision, the seeds, and every RNG's state in plain types
(what a checkpoint saves so that a resume continues bit for bit)."""

from __future__ import annotations

import random
import signal
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from mmvid.errors import MmvidError


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise MmvidError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    # An explicit index: DDP and the NCCL collectives need the rank's own GPU (set by mmvid.distributed.launch).
    return torch.device("cuda", torch.cuda.current_device()) if name == "cuda" else torch.device(name)


def autocast(device: torch.device, amp: str):
    if amp == "off":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_init(worker_id: int) -> None:
    """A DataLoader worker's start: its numpy seed from torch's per-worker seed, and Ctrl-C ignored."""
    np.random.seed(torch.initial_seed() % 2**32)
    # Ctrl-C reaches the whole process group; a worker that died of it would fail the step
    # instead of letting the main process save and stop (mmvid.engine.progress.StopRequest).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def rng_state() -> dict[str, Any]:
    """Every RNG's state in plain types (a checkpoint is loaded with ``weights_only=True``): python's
    ``getstate()`` tuple of ints, numpy's MT19937 state as a dict with its key as an int64 tensor,
    torch's and CUDA's byte tensors."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"name": str(name), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    n = s["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
