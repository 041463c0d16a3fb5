"""The runs diagnose trains: the fused run of ``--dataset`` (as many epochs as fit in ``--minutes``) and one
run per modality alone for the probes; each reused when it finished with the same config, resumed when it
stopped."""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmvid.config import resolve_config
from mmvid.engine.loaders import make_loader, make_splits
from mmvid.engine.loop import build_training, train
from mmvid.engine.step import train_step
from mmvid.sweeps.state import folder_state
from mmvid.workspace import CKPT_LAST


def alone_config(cfg, m: str):
    """The run of modality m alone for the comparison: the fused run's data, encoder, optimiser, epochs and
    seed; one modality, so no fusion, auxiliary heads, mixing or balancing."""
    d = cfg.to_dict()
    d["data"]["modalities"] = [m]
    d["model"].update({"fusion": "concat", "fusion_args": {}, "calibrate": False, "aux_loss": {}})
    d["augment"].update({"name": "none", "args": {}, "unimodal": "mask"})
    d["balance"] = {"name": "none", "args": {}}
    d["run_name"] = None
    d["monitor_train"] = True
    return resolve_config(d)


def ensure_run(cfg, cache: Path, run_dir: Path, console, what: str) -> Path:
    """Train ``run_dir`` per ``cfg``, reuse it when it finished with this config, resume it when it stopped;
    a folder trained with another config is an error naming the key (never silently overwritten)."""
    state = folder_state(run_dir, cfg)
    if state == "done":
        console.print(f"{what}: reusing {run_dir}", soft_wrap=True)
        return run_dir
    resume = state == "partial" and (run_dir / CKPT_LAST).exists()
    console.print(f"{what}: {'resuming' if resume else 'training'} {run_dir} ({cfg.epochs} epochs)", soft_wrap=True)
    train(cfg, cache, run_dir, resume=resume, progress=console.is_terminal)
    return run_dir


def config_hash(cfg) -> str:
    d = cfg.to_dict()
    for key in ("run_name", "device", "gpus"):
        d.pop(key, None)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]


def step_seconds(cfg, info, steps: int = 3) -> float:
    """Median seconds of a training step of ``cfg`` on this machine, timed on real batches after one warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        parts = build_training(cfg, info, Path(tmp))
        loader = make_loader(info, parts.ctx.splits.train, cfg, train=True)
        times = []
        for k, (inputs, y) in enumerate(loader):
            t0 = time.perf_counter()
            train_step(parts, inputs, y)
            if k:
                times.append(time.perf_counter() - t0)
            if len(times) >= steps:
                break
    return float(np.median(times)) if times else 0.0


def epochs_for_budget(cfg, alone_cfgs: list, info, minutes: float, console) -> tuple[int, dict[str, Any]]:
    """The most epochs (at most ``cfg.epochs``, at least 1) for which the fused run and every alone run fit in
    ``minutes``: an epoch costs its training steps plus its evaluation passes (train monitor, val, test),
    an eval step taken as 0.35 of a training step (a forward without backward)."""
    sp = make_splits(info, cfg.data.val_fraction, cfg.seed, cfg.protocol)
    bs = cfg.data.batch_size
    n_train, n_eval = len(sp.train), len(sp.train) + len(sp.val) + len(sp.test)
    per_epoch = 0.0
    timed = {}
    for c in [cfg, *alone_cfgs]:
        t = step_seconds(c, info)
        timed["+".join(c.data.modalities)] = t
        per_epoch += t * (math.ceil(n_train / bs) + 0.35 * math.ceil(n_eval / bs))
    fit = int(minutes * 60 // max(per_epoch, 1e-9))
    epochs = max(1, min(cfg.epochs, fit))
    console.print(f"budget {minutes:g} min: a training step takes "
                  + ", ".join(f"{v:.2f} s ({k})" for k, v in timed.items())
                  + f" here, so about {per_epoch:.0f} s per epoch of all runs: {epochs} epochs"
                  + (f" (the recipe has {cfg.epochs})" if epochs < cfg.epochs else ""), soft_wrap=True)
    return epochs, {"minutes": minutes, "step_seconds": timed, "epoch_seconds_estimate": per_epoch, "epochs": epochs}
