"""Checkpoints: what one holds, writing it atomically, reading one safely, and resuming from one.

A checkpoint holds everything a resume needs to continue bit for bit on CPU: model, optimizer, scheduler,
scaler, augmentation and balancer state, the shared mixing generator and every rank's RNG (the sampler's order
follows from ``seed + epoch``), and, after Ctrl-C inside an epoch, the position in it. Checkpoints hold only
tensors, numbers, strings and plain containers, and are loaded with ``weights_only=True``, so that opening
one from others never runs code.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmvid.config import TrainConfig, config_from_dict
from mmvid.distributed.collectives import gather_objects
from mmvid.engine.context import TrainingParts
from mmvid.engine.model import build_model
from mmvid.engine.runtime import rng_state, set_rng_state
from mmvid.errors import MmvidError
from mmvid.models.classifier import MultimodalClassifier
from mmvid.plugins import load_plugins
from mmvid.runfiles import cache_fingerprint
from mmvid.workspace import CKPT_BEST, CKPT_LAST

PLAIN_LEAVES = (str, bytes, int, float, bool, type(None), torch.dtype, torch.device, torch.Size)
CHECKPOINT_KEYS = ("config", "model", "class_names")  # what evaluating a checkpoint needs
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "augment", "balancer", "generator", "rng", "epoch", "best")


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first entry that is not a tensor, number, string or plain container.

    A plug-in whose ``state_dict`` returns e.g. a numpy array fails here, when its checkpoint is
    written, rather than when a user cannot load it. (Exact types: ``np.float64`` subclasses float.)
    """
    if isinstance(obj, torch.Tensor) or type(obj) in PLAIN_LEAVES:
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            check_plain(k, f"{where} key")
            check_plain(v, f"{where}[{k!r}]")
    elif type(obj) in (list, tuple, set):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
    else:
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint holds only "
                        f"tensors, numbers, strings and dict/list/tuple (convert it in the state_dict)")


def atomic_save(obj: Any, path: Path) -> None:
    check_plain(obj)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _unsafe_globals(path: Path) -> list[str]:
    """The importable names (classes, functions) a checkpoint written by ``torch.save`` refers to, found
    by scanning its pickle opcodes without running them; empty for any other file."""
    try:
        return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)))
    except Exception:
        return []


def load_checkpoint(path: Path, keys: tuple[str, ...] = CHECKPOINT_KEYS) -> dict[str, Any]:
    """A checkpoint's dict, loaded with ``weights_only=True``: only tensors, numbers, strings and plain
    containers are read, so a file from others cannot run code. Every problem is one MmvidError line."""
    path = Path(path)
    if not path.exists():
        raise MmvidError(f"no checkpoint at {path}; train first or point to a run folder with {CKPT_LAST}")
    damaged = (f"cannot read checkpoint {path}: it is damaged or truncated, or not a checkpoint at all; "
               f"copy it again or retrain")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore")
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise MmvidError(damaged) from None
        names = _unsafe_globals(path)
        if not names:  # random bytes, or a pickle not written by torch.save
            raise MmvidError(damaged) from None
        code = [n for n in names if n.split(".")[0] != "numpy"]
        if not code:
            raise MmvidError(f"checkpoint {path} holds numpy objects ({', '.join(names)}), as checkpoints of older mmvid "
                             f"versions did; it is not loaded, for safety (such a file could run code); retrain the run "
                             f"with this version") from None
        raise MmvidError(f"checkpoint {path} holds code objects ({', '.join(code)}); it is not loaded, for safety "
                         f"(opening it could run that code); use checkpoints written by mmvid from a source you trust, "
                         f"or retrain") from None
    except Exception:
        raise MmvidError(damaged) from None
    missing = [k for k in keys if k not in ck] if isinstance(ck, dict) else list(keys)
    if not missing and not isinstance(ck["config"], dict):
        missing = ["config section"]
    if missing:
        raise MmvidError(f"{path} is not an mmvid checkpoint (it has no {', '.join(missing)}); "
                         f"point to a checkpoint written by `mmvid train`")
    return ck


def own_state(ck: dict[str, Any], key: str, rank: int, world_size: int) -> Any:
    """This rank's entry of a per-rank checkpoint field (``rank_<key>``); rank 0's when the number
    of processes changed since the checkpoint, or when it holds only ``<key>``."""
    per_rank = ck.get(f"rank_{key}") or [ck[key]]
    return per_rank[rank] if len(per_rank) == world_size else per_rank[0]


CHECKPOINT_CHOICES = {"best": CKPT_BEST, "last": CKPT_LAST}


def check_checkpoint_choice(which: str) -> str:
    if which not in CHECKPOINT_CHOICES:
        raise MmvidError(f"--checkpoint {which!r} is not valid; choose best (the best-validation epoch; the best-test "
                         f"epoch under protocol reference) or last (the last epoch)")
    return which


def checkpoint_file(path: Path, which: str = "best") -> Path:
    """The checkpoint a run folder's ``which`` names: ``best`` is checkpoint_best.pt, else (none saved
    yet) checkpoint_last.pt; ``last`` is checkpoint_last.pt. A file is returned as given."""
    path = Path(path)
    check_checkpoint_choice(which)
    if not path.is_dir():
        return path
    return path / CKPT_BEST if which == "best" and (path / CKPT_BEST).exists() else path / CKPT_LAST


def model_from_checkpoint(path: Path, which: str = "best") -> tuple[MultimodalClassifier, TrainConfig, dict[str, Any]]:
    """Rebuild the model and its config from a checkpoint file or a run folder (see :func:`checkpoint_file`)."""
    load_plugins()
    path = checkpoint_file(path, which)
    ck = load_checkpoint(path)
    cfg = config_from_dict(ck["config"])
    model = build_model(cfg, len(ck["class_names"]))
    try:
        model.load_state_dict(ck["model"])
    except Exception as e:
        raise MmvidError(f"checkpoint {path}: its weights do not fit the model of its own config "
                         f"({str(e).splitlines()[0][:200]}); point to a checkpoint written by `mmvid train`") from None
    return model, cfg, ck


def fingerprint(model: torch.nn.Module) -> str:
    """SHA-1 of every parameter's bytes: equal on all DDP ranks exactly when their weights are."""
    h = hashlib.sha1()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def training_state(training: TrainingParts, epoch: int, best: dict[str, Any],
                   position: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The checkpoint after ``epoch`` (0-based; -1 before the first), and ``position`` inside the next epoch
    when Ctrl-C stopped it there (:meth:`mmvid.engine.progress.EpochTotals.to_dict`). ``best``: the best
    epoch so far, as summary.json has it.

    Every rank must call it (it gathers every rank's RNG state, position and weights' fingerprint); it returns
    the checkpoint on rank 0 and None on the others. Raises MmvidError when the ranks' weights differ.
    """
    ctx, world_size = training.ctx, training.ctx.world_size
    cfg, info, splits, model = ctx.cfg, ctx.info, ctx.splits, ctx.model
    rngs = gather_objects(rng_state(), world_size)
    rank_positions = gather_objects(position, world_size)
    prints = gather_objects(fingerprint(model), world_size)
    if len(set(prints)) > 1:
        raise MmvidError(f"model parameters differ across ranks after epoch {epoch + 1} ({prints}); "
                         f"a balancer or augmentation changed them on one rank only")
    if ctx.rank != 0:
        return None
    balancer_modules = training.balancer_modules
    return {"model": model.state_dict(), "optimizer": ctx.optimizer.state_dict(),
            "scheduler": training.scheduler.state_dict(), "scaler": ctx.scaler.state_dict(),
            "augment": training.augment.state_dict(), "balancer": training.balancer.state_dict(),
            "extra": balancer_modules.state_dict() if balancer_modules is not None else None,
            "generator": ctx.generator.get_state(),
            "rng": rngs[0], "rank_rng": rngs, "epoch": epoch, "step": ctx.step, "best": best,
            "partial": position, "rank_partial": rank_positions, "world_size": world_size,
            "rank_fingerprints": prints, "train_scores": ctx.train_scores, "val_scores": ctx.val_scores,
            "config": cfg.to_dict(), "class_names": info.class_names, "cache": str(info.path),
            "cache_fingerprint": cache_fingerprint(info), "modalities": cfg.data.modalities,
            "splits": {k: torch.from_numpy(np.asarray(getattr(splits, k))) for k in ("train", "val", "test")}}


def restore_training(training: TrainingParts, path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load the checkpoint at ``path`` into ``training`` (every state :func:`training_state` saved, this rank's
    RNG included). Returns the checkpoint and this rank's position inside the epoch that Ctrl-C interrupted
    (None when it was saved at an epoch's end). Raises MmvidError when such a position was saved by another
    number of processes than now."""
    ctx, world_size = training.ctx, training.ctx.world_size
    ck = load_checkpoint(path, CHECKPOINT_KEYS + RESUME_KEYS)
    ctx.model.load_state_dict(ck["model"])
    ctx.optimizer.load_state_dict(ck["optimizer"])
    training.scheduler.load_state_dict(ck["scheduler"])
    ctx.scaler.load_state_dict(ck["scaler"])
    training.augment.load_state_dict(ck["augment"])
    training.balancer.load_state_dict(ck["balancer"])
    if training.balancer_modules is not None and ck.get("extra") is not None:
        training.balancer_modules.load_state_dict(ck["extra"])
    ctx.generator.set_state(ck["generator"])
    set_rng_state(own_state(ck, "rng", ctx.rank, world_size))
    ctx.train_scores, ctx.val_scores, ctx.step = ck.get("train_scores"), ck.get("val_scores"), ck.get("step", 0)
    if not ck.get("partial"):
        return ck, None
    if ck.get("world_size", 1) != world_size:
        raise MmvidError(f"{path} was saved in the middle of an epoch by {ck.get('world_size', 1)} "
                         f"processes; resume it with as many (now {world_size})")
    return ck, dict(own_state(ck, "partial", ctx.rank, world_size))
