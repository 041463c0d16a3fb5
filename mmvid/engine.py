"""The one explicit training loop. Balancers and augmentations attach at named hook points
(see :mod:`mmvid.balance.base`); nothing else copies this loop.

Per epoch: augment/balancer ``on_epoch_start`` -> steps (:func:`train_step`: data -> forward (+ the auxiliary
heads' loss of ``model.aux_loss``) -> per ``balancer.passes`` item: loss -> backward -> unscale -> ``after_backward``
-> clip -> step) ->
evaluation (val, test, and the train-set imbalance monitor of paper Fig. 1) -> ``on_epoch_end`` -> metrics.jsonl line -> checkpoint.

The same loop runs as one rank of a DDP group (:mod:`mmvid.distributed`). A checkpoint holds
everything a resume needs to continue bit for bit on CPU: model, optimizer, scheduler, scaler,
augmentation and balancer state, the shared mixing generator and every rank's RNG; the sampler's
order follows from ``seed + epoch``. Ctrl-C between two steps also saves the position inside the epoch.
Checkpoints hold only tensors, numbers, strings and plain containers, and are loaded with
``weights_only=True``, so that opening one from others never runs code.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import signal
import time
import warnings
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mmvid.augment.base import EpochMeans, mixed_cross_entropy, modality_mix
from mmvid.augment.bmm import imbalance
from mmvid.config import TrainConfig, config_from_dict, save_config
from mmvid.data.cache import CACHE_KEY, CacheInfo, read_info
from mmvid.data.torch_dataset import INTENSITY_KEY, CacheDataset, check_finite_inputs, finish_batch
from mmvid.data.params import check_prepared
from mmvid.data.sources import stratified_split
from mmvid.errors import Interrupted, MmvidError
from mmvid.models.classifier import MultimodalClassifier, build_model
from mmvid.registry import AUGMENTS, BALANCERS, load_plugins
from mmvid.runfiles import METRICS, cache_fingerprint, read_jsonl
from mmvid.workspace import CKPT_BEST, CKPT_LAST, check_run_folder, write_atomic


# ----------------------------------------------------------------------------- devices, seeds


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise MmvidError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    # An explicit index: DDP and the NCCL collectives need the rank's own GPU (set by mmvid.distributed).
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


def _worker_init(worker_id: int) -> None:
    np.random.seed(torch.initial_seed() % 2**32)
    # Ctrl-C reaches the whole process group; a worker that died of it would fail the step
    # instead of letting the main process save and stop (mmvid.distributed.StopRequest).
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


# ----------------------------------------------------------------------------- data


@dataclass
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def make_splits(info: CacheInfo, val_fraction: float, seed: int, protocol: str = "clean") -> Splits:
    """Train/val/test rows. Val comes from the cache's val split, else is held out of train (stratified).

    Under ``protocol="reference"`` there is no validation split at all (not even a cache's own): every
    training clip trains and the best epoch is chosen on test, as OGM-GE and Data Remixing do."""
    train, val, test = info.indices("train"), info.indices("val"), info.indices("test")
    if len(train) == 0:
        raise MmvidError(f"cache {info.path} has no usable train clips")
    if protocol == "reference":
        return Splits(train, val[:0], test)
    if len(val) == 0 and val_fraction > 0:
        parts = stratified_split(list(info.labels[train]), val_fraction, seed)
        is_val = np.asarray([p == "test" for p in parts])
        train, val = train[~is_val], train[is_val]
    return Splits(train, val, test)


def check_modalities(info: CacheInfo, modalities: list[str]) -> None:
    missing = [m for m in modalities if CACHE_KEY[m] not in info.modalities]
    if missing:
        raise MmvidError(f"cache {info.path.name} has no {', '.join(missing)} data (it holds {', '.join(info.modalities)}); "
                         f"set data.modalities or prepare the cache with that modality")


def make_loader(info: CacheInfo, rows: np.ndarray, cfg: TrainConfig, train: bool, shuffle: bool | None = None,
                sampler=None, batch_size: int | None = None, device: torch.device | None = None,
                intensity: bool = False):
    """A DataLoader over ``rows`` of the cache, or, when ``data.cache_on_gpu`` and a ``device`` are
    given (the training loop), a DeviceLoader serving the rows from tensors already on ``device``.
    ``intensity``: batches also carry each clip's intensity target (``INTENSITY_KEY``; the cache's levels)."""
    on_device = cfg.data.cache_on_gpu and device is not None
    check_prepared(info.params, cfg.data.prepared, f"cache {info.path}")
    targets = info.intensity.targets(info.labels, rows) if intensity and info.intensity is not None else None
    ds = CacheDataset(info.path, rows, cfg.data.modalities, train=train, crop_size=cfg.data.crop_size,
                      flip=cfg.data.flip, random_crop=cfg.data.random_crop,
                      flow_bound=float(info.params.get("flow_bound", 20.0)), in_memory=cfg.data.cache_in_memory or on_device,
                      crop_in_loader=not (cfg.device != "cpu" and torch.cuda.is_available()),  # mmvid.data.crop: why
                      intensity=targets, crop=cfg.data.crop)
    shuffle = (train if shuffle is None else shuffle) and sampler is None
    if on_device:
        from mmvid.data.device_loader import DeviceLoader

        return DeviceLoader(ds, batch_size or cfg.data.batch_size, device, sampler, shuffle)
    workers = cfg.data.workers
    return DataLoader(ds, batch_size=batch_size or cfg.data.batch_size, shuffle=shuffle, sampler=sampler,
                      num_workers=workers, pin_memory=torch.cuda.is_available(), drop_last=False,
                      persistent_workers=workers > 0, worker_init_fn=_worker_init if workers > 0 else None)


def to_device(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move a loader's batch to ``device`` and finish decoding it there (uint8 frames -> normalised float)."""
    return finish_batch({k: v.to(device, non_blocking=True) for k, v in inputs.items()})


# ----------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    """Fused and per-modality (Eq. 5 masking) results over one split."""

    n: int
    loss: float
    correct: int
    modality_correct: dict[str, int]
    modality_score: dict[str, float]  # s_m = sum_i p_m,i[y_i]
    preds: np.ndarray | None = None
    labels: np.ndarray | None = None
    modality_preds: dict[str, np.ndarray] = field(default_factory=dict)
    features: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def acc(self) -> float:
        return self.correct / max(self.n, 1)

    def modality_acc(self, m: str) -> float:
        return self.modality_correct[m] / max(self.n, 1)

    def scores(self) -> dict[str, dict[str, float]]:
        """What steers methods (``ctx.train_scores``/``val_scores``): per modality {"score": s_m (Eq. 5),
        "correct", "n"}."""
        return {m: {"score": s, "correct": float(self.modality_correct[m]), "n": float(self.n)}
                for m, s in self.modality_score.items()}


@torch.no_grad()
def evaluate_model(model: MultimodalClassifier, loader: DataLoader, device: torch.device, amp: str = "off",
                   keep: bool = False, keep_features: bool = False, reduce=None,
                   transform=None) -> EvalResult:
    """Eval-mode pass: fused accuracy and loss, and per-modality accuracy and score by masking.

    ``transform(inputs, y) -> inputs`` perturbs the batch (robustness); ``reduce`` sums across ranks.
    """
    was_training = model.training
    model.eval()
    mods = model.modalities
    n = correct = 0
    loss_sum = 0.0
    mcorrect = {m: 0 for m in mods}
    mscore = {m: 0.0 for m in mods}
    preds, labels, mpreds, feats = [], [], {m: [] for m in mods}, {}
    cache_path = getattr(getattr(loader, "dataset", None), "path", None)
    for inputs, y in loader:
        inputs, y = to_device(inputs, device), y.to(device)
        clean = inputs
        if transform is not None:
            inputs = transform(inputs, y)
        with autocast(device, amp):
            out = model(inputs)
            uni = model.unimodal_logits(out.raw)
        logits = out.logits.float()
        batch_loss = float(F.cross_entropy(logits, y, reduction="sum"))
        if not np.isfinite(batch_loss):  # a damaged cache must not pass as a poor model
            check_finite_inputs(clean, cache_path, " in evaluation")
        loss_sum += batch_loss
        p = logits.argmax(1)
        correct += int((p == y).sum())
        n += len(y)
        for m in mods:
            lm = uni[m].float()
            mcorrect[m] += int((lm.argmax(1) == y).sum())
            mscore[m] += float(lm.softmax(1).gather(1, y[:, None]).sum())
            if keep:
                mpreds[m].append(lm.argmax(1).cpu())
        if keep:
            preds.append(p.cpu())
            labels.append(y.cpu())
        if keep_features:
            for k, v in {**out.features, "fused": out.fused}.items():
                feats.setdefault(k, []).append(v.float().cpu())
    model.train(was_training)
    if reduce is not None:
        vec = torch.tensor([n, correct, loss_sum] + [mcorrect[m] for m in mods] + [mscore[m] for m in mods], dtype=torch.float64)
        vec = reduce(vec)
        n, correct, loss_sum = int(vec[0]), int(vec[1]), float(vec[2])
        mcorrect = {m: int(vec[3 + i]) for i, m in enumerate(mods)}
        mscore = {m: float(vec[3 + len(mods) + i]) for i, m in enumerate(mods)}
    res = EvalResult(n, loss_sum / max(n, 1), correct, mcorrect, mscore)
    if keep:
        res.preds, res.labels = torch.cat(preds).numpy(), torch.cat(labels).numpy()
        res.modality_preds = {m: torch.cat(v).numpy() for m, v in mpreds.items()}
    if keep_features:
        res.features = {k: torch.cat(v).numpy() for k, v in feats.items()}
    return res


def rho_of(res: EvalResult, modalities: list[str]) -> float | None:
    """Eq. 6 on an evaluation pass (summed true-class probabilities)."""
    if len(modalities) < 2:
        return None
    return imbalance(res.modality_score, modalities)[0]


def train_scores_need(plugin: Any) -> str | None:
    """What a plug-in's ``needs_train_scores`` asks of the monitor: None, "any" or "full" (True = "full")."""
    need = getattr(plugin, "needs_train_scores", False)
    return "full" if need is True else (need or None)


def monitor_plan(cfg: TrainConfig, augment: Any, balancer: Any) -> tuple[float, str | None]:
    """The fraction of the train rows the monitor evaluates after every epoch, and a note when a plug-in
    needs more than ``monitor_train`` asks for (it then gets what it needs: B-MM the whole train set)."""
    needs = {f"augment.name={cfg.augment.name}": train_scores_need(augment),
             f"balance.name={cfg.balance.name}": train_scores_need(balancer)}
    full = [name for name, need in needs.items() if need == "full"]
    want = float(cfg.monitor_train)
    if full and want < 1.0:
        return 1.0, (f"monitor_train={want:g} raised to 1: {', '.join(full)} steers on statistics over the whole "
                     f"train set each epoch")
    if want == 0.0 and any(needs.values()):
        some = [name for name, need in needs.items() if need]
        return 1.0, (f"monitor_train=0 raised to 1: {', '.join(some)} steers on train-set statistics each epoch; "
                     f"set monitor_train to a fraction in (0, 1) to measure them on a subsample")
    return want, None


def monitor_rows(rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The train rows the monitor evaluates: all of them (``fraction`` 1), none (0), or round(fraction * N)
    (at least 1) drawn without replacement by a generator of its own seeded with (seed, "monitor"), in
    cache order. The same rows every epoch (curves stay comparable) and after a resume; each rank of
    DDP then evaluates every world_size-th of them."""
    if fraction >= 1.0 or not len(rows):
        return rows
    if fraction <= 0.0:
        return rows[:0]
    n = max(1, round(fraction * len(rows)))
    rng = np.random.default_rng([seed, int.from_bytes(b"monitor", "little")])
    return rows[np.sort(rng.choice(len(rows), size=n, replace=False))]


def evaluates_at(cfg: TrainConfig, epoch: int) -> bool:
    """Whether val and test are evaluated (and logged) after ``epoch`` (0-based): every ``eval_every``-th
    epoch and always the last."""
    return (epoch + 1) % cfg.eval_every == 0 or epoch + 1 >= cfg.epochs


def evaluate_epoch(ctx: TrainContext, loaders: dict[str, Any], monitor: Any | None, held_out: bool,
                   steer_val: bool = False, reduce=None) -> dict[str, Any]:
    """The evaluation after an epoch: val and test (``loaders``) when ``held_out``, else val alone when a
    plug-in steers on it (``steer_val``; not logged then), and the train-set monitor when ``monitor`` is a
    loader. Sets ctx.train_scores / val_scores / val_losses; returns the epoch's metrics keys
    ({split}_acc, _loss, _acc_<m>, _rho; rho and s_<m> from the monitor; eval_seconds).

    It runs on a copy of the CPU random state (a DataLoader draws its base seed from it), so whether
    and how much is evaluated never changes the training that follows.
    """
    t0 = time.time()
    names = [k for k in loaders if held_out or (k == "val" and steer_val)]
    with torch.random.fork_rng(devices=[]):
        results = {k: evaluate_model(ctx.model, loaders[k], ctx.device, ctx.cfg.amp, reduce=reduce) for k in names}
        if monitor is not None:
            results["train"] = evaluate_model(ctx.model, monitor, ctx.device, ctx.cfg.amp, reduce=reduce)
            ctx.train_scores = results["train"].scores()
    if "val" in results:
        ctx.val_scores = results["val"].scores()
        ctx.val_losses = {"fused": results["val"].loss}
        if not held_out:
            del results["val"]
    rec: dict[str, Any] = {}
    mods = ctx.modalities
    for split, res in results.items():
        rec[f"{split}_acc"] = res.acc
        rec[f"{split}_loss"] = res.loss
        for m in mods:
            rec[f"{split}_acc_{m}"] = res.modality_acc(m)
        if len(mods) >= 2:
            rec[f"{split}_rho"] = rho_of(res, mods)
    if "train" in results:
        rec["rho"] = rec.get("train_rho")
        for m in mods:
            rec[f"s_{m}"] = results["train"].modality_score[m]
    rec["eval_seconds"] = time.time() - t0
    return rec


# ----------------------------------------------------------------------------- context


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

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum across ranks (identity in one process)."""
        if self.world_size > 1:
            import torch.distributed as dist

            t = t.to(self.device)
            dist.all_reduce(t)
            t = t.cpu()
        return t

    def loader(self, rows: np.ndarray, train: bool = False, shuffle: bool = False) -> DataLoader:
        return make_loader(self.info, rows, self.cfg, train=train, shuffle=shuffle)


# ----------------------------------------------------------------------------- checkpoints


# What a checkpoint may hold: it is loaded with ``weights_only=True``, which refuses anything else
# (numpy arrays and scalars included), so that opening a checkpoint from others never runs code.
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


# ----------------------------------------------------------------------------- training


def selection_score(best: dict[str, Any]) -> float:
    """The accuracy a run's best epoch was chosen by: val, or test where it was selected on test. A best
    saved before ``selected_on`` existed kept the chosen accuracy under ``val_acc`` (test without val)."""
    score = best["val_acc"] if "val_acc" in best else best.get("test_acc")
    return -1.0 if score is None else float(score)


def best_selected_on(summary: dict[str, Any]) -> str:
    """``val`` or ``test``: what a run's best epoch (summary.json ``best``) was chosen on. A summary written
    before ``selected_on`` existed chose on val exactly when its epochs logged val_acc."""
    best = summary.get("best", {})
    return best.get("selected_on") or ("val" if "val_acc" in summary.get("last", {}) else "test")


def print_notes(notes) -> None:
    """A plug-in's one-line notes (e.g. MS-Mix's fallback), as the commands print theirs."""
    if notes:
        from rich.console import Console
        from rich.markup import escape

        console = Console()
        for note in notes:
            console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True, highlight=False)


def default_run_name(cfg: TrainConfig, dataset: str) -> str:
    """``<cache>-<fusion>[_cal]-<augment>[-<balancer>]-s<seed>-<time>``: a plain name (mmvid.schema), as a
    --run-name must be; a character a plug-in's name may hold outside that set becomes ``_``."""
    parts = [dataset, cfg.model.fusion + ("_cal" if cfg.model.calibrate else "") + ("_aux" if cfg.model.aux_loss else ""),
             cfg.augment.name]
    if cfg.balance.name != "none":
        parts.append(cfg.balance.name)
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts + [f"s{cfg.seed}", time.strftime("%Y%m%d-%H%M%S")]))


def train(cfg: TrainConfig, cache: Path, run_dir: Path, resume: bool = False, progress: bool = True,
          rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Train per ``cfg`` on ``cache``; writes config.yaml, metrics.jsonl and checkpoints into ``run_dir``.

    With ``world_size > 1`` this is one rank of a process group already joined (:mod:`mmvid.distributed`):
    the model is wrapped in DDP, each rank reads its shard of every split, metrics and the statistics
    that steer methods are summed across ranks, and only rank 0 writes files.
    """
    from mmvid.distributed import ResumableSampler, StopRequest, gather_objects, sync_buffers

    load_plugins()
    if rank == 0:  # the rank that writes; the others would race with its first files
        check_run_folder(run_dir)  # never into a folder of files mmvid did not write (it deletes metrics.jsonl below)
    info = read_info(cache)  # cheap damage checks: labels in range, shapes as the attributes say
    check_modalities(info, cfg.data.modalities)
    from mmvid.workspace import writable_dir

    writable_dir(run_dir, "run folder")
    is_main = rank == 0
    parts = build_training(cfg, info, run_dir, rank, world_size)
    if is_main:
        print_notes(parts.augment.notes)
    ctx, augment, balancer, extra, scheduler = parts.ctx, parts.augment, parts.balancer, parts.extra, parts.scheduler
    model, optimizer, scaler, device, gen, splits = ctx.model, ctx.optimizer, ctx.scaler, ctx.device, ctx.generator, ctx.splits
    modalities = cfg.data.modalities
    if rank:
        seed_everything(cfg.seed + rank)  # per-rank crops/flips; the model init above is shared

    # Each rank trains on its DistributedSampler share and evaluates its slice of every split.
    sampler = ResumableSampler(len(splits.train), world_size, rank, cfg.seed, lambda order: balancer.epoch_order(order, ctx))
    train_loader = make_loader(info, splits.train, cfg, train=True, sampler=sampler, device=device,
                               intensity=augment.needs_intensity)
    eval_loaders = {k: make_loader(info, rows[rank::world_size], cfg, train=False, device=device) for k, rows in
                    (("val", splits.val), ("test", splits.test)) if len(rows)}
    fraction, _ = monitor_plan(cfg, augment, balancer)  # its note is printed by workflows.run_train
    monitor_loader = (make_loader(info, monitor_rows(splits.train, fraction, cfg.seed)[rank::world_size], cfg,
                                  train=False, device=device) if fraction > 0 else None)
    steer_val = augment.needs_val_scores or balancer.needs_val_scores

    # The best epoch is chosen on val, or on test where no validation split exists (protocol reference, or
    # data.val_fraction 0 without a cache val split): summary.json and the checkpoint say which (selected_on).
    on = "val" if len(splits.val) else "test"
    start_epoch, best = 0, {f"{on}_acc": -1.0, "epoch": -1, "selected_on": on}
    partial = {"batch": 0, "loss_sum": 0.0, "hits": 0, "seen": 0}  # progress inside an interrupted epoch
    metrics_path = run_dir / METRICS
    if resume and (run_dir / CKPT_LAST).exists():
        ck = load_checkpoint(run_dir / CKPT_LAST, CHECKPOINT_KEYS + RESUME_KEYS)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        augment.load_state_dict(ck["augment"])
        balancer.load_state_dict(ck["balancer"])
        if extra is not None and ck.get("extra") is not None:
            extra.load_state_dict(ck["extra"])
        gen.set_state(ck["generator"])
        set_rng_state(own_state(ck, "rng", rank, world_size))
        ctx.train_scores, ctx.val_scores, ctx.step = ck.get("train_scores"), ck.get("val_scores"), ck.get("step", 0)
        start_epoch, best = ck["epoch"] + 1, ck["best"]
        if ck.get("partial"):
            if ck.get("world_size", 1) != world_size:
                raise MmvidError(f"{run_dir / CKPT_LAST} was saved in the middle of an epoch by {ck.get('world_size', 1)} "
                                 f"processes; resume it with as many (now {world_size})")
            partial = dict(own_state(ck, "partial", rank, world_size))
            sampler.skip = partial["batch"] * cfg.data.batch_size
        if is_main and metrics_path.exists():  # drop lines of an epoch that was interrupted after its checkpoint
            keep = [rec for rec in read_jsonl(metrics_path) if rec.get("epoch", 0) <= ck["epoch"]]
            if keep:
                write_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in keep))
            else:  # no finished epoch yet (Ctrl-C in the first): no file, as before that epoch
                metrics_path.unlink()
    elif is_main:
        metrics_path.unlink(missing_ok=True)
    if is_main:
        save_config(cfg, run_dir / "config.yaml")

    def checkpoint(epoch: int, part: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """State after ``epoch`` (and ``part`` of the next one); None on ranks other than 0."""
        rngs = gather_objects(rng_state(), world_size)  # collectives: every rank calls them
        rank_part = gather_objects(part, world_size)
        prints = gather_objects(fingerprint(model), world_size)
        if len(set(prints)) > 1:
            raise MmvidError(f"model parameters differ across ranks after epoch {epoch + 1} ({prints}); "
                             f"a balancer or augmentation changed them on one rank only")
        if not is_main:
            return None
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "augment": augment.state_dict(), "balancer": balancer.state_dict(),
                "extra": extra.state_dict() if extra is not None else None, "generator": gen.get_state(),
                "rng": rngs[0], "rank_rng": rngs, "epoch": epoch, "step": ctx.step, "best": best,
                "partial": part, "rank_partial": rank_part, "world_size": world_size, "rank_fingerprints": prints,
                "train_scores": ctx.train_scores, "val_scores": ctx.val_scores,
                "config": cfg.to_dict(), "class_names": info.class_names, "cache": str(info.path),
                "cache_fingerprint": cache_fingerprint(info),
                "modalities": modalities, "splits": {k: torch.from_numpy(np.asarray(getattr(splits, k))) for k in ("train", "val", "test")}}

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    last: dict[str, Any] = {}
    reduce = ctx.all_reduce if world_size > 1 else None
    with Progress(*columns, disable=not (progress and is_main)) as bar, StopRequest() as stop:
        ep_task = bar.add_task("epochs", total=cfg.epochs, completed=start_epoch, info="")
        try:
            for epoch in range(start_epoch, cfg.epochs):
                ctx.epoch = epoch
                t0 = time.time()
                if not partial["batch"]:  # a resumed half epoch has its augment/balancer state from the checkpoint
                    augment.on_epoch_start(ctx)
                    balancer.on_epoch_start(ctx)
                sampler.set_epoch(epoch)
                model.train()
                step_task = bar.add_task(f"epoch {epoch + 1}", total=len(train_loader) + partial["batch"],
                                         completed=partial["batch"], info="")
                batch, loss_sum, hits, seen = partial["batch"], partial["loss_sum"], partial["hits"], partial["seen"]
                partial = {"batch": 0, "loss_sum": 0.0, "hits": 0, "seen": 0}
                for inputs, y in train_loader:
                    out, loss, y = train_step(parts, inputs, y)
                    batch += 1
                    loss_sum += float(loss.detach()) * len(y)
                    hits += int((out.logits.argmax(1) == y).sum())
                    seen += len(y)
                    bar.update(step_task, advance=1, info=f"loss {loss_sum / seen:.3f}")
                    if stop.requested(reduce) and batch < len(train_loader):
                        part = {"batch": batch, "loss_sum": loss_sum, "hits": hits, "seen": seen}
                        ck = checkpoint(epoch - 1, part)
                        if is_main:
                            atomic_save(ck, run_dir / CKPT_LAST)
                        raise KeyboardInterrupt
                bar.remove_task(step_task)
                scheduler.step()
                sync_buffers(model, world_size)  # BN statistics: every rank evaluates (and saves) rank 0's model
                epoch_stop = stop.requested(reduce)

                # Evaluation and the imbalance monitor (paper Fig. 1).
                tr_loss, tr_hits, tr_seen = (ctx.all_reduce(torch.tensor([loss_sum, hits, seen], dtype=torch.float64))
                                             .tolist())
                rec: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                                       "train_loss": tr_loss / max(tr_seen, 1), "train_acc_batch": tr_hits / max(tr_seen, 1)}
                held_out = evaluates_at(cfg, epoch)
                rec.update(evaluate_epoch(ctx, eval_loaders, monitor_loader, held_out, steer_val, reduce))
                balancer.on_epoch_end(ctx)
                rec.update(augment.log())
                rec.update(balancer.log())
                rec.update(parts.aux.log(reduce) if parts.aux is not None else {})
                rec["seconds"] = time.time() - t0
                select = rec.get("val_acc", rec.get("test_acc", 0.0))
                # best: the first of the highest among the epochs evaluated (strictly greater, as OGM-GE's and
                # Data Remixing's `if acc > best_acc`)
                improved = held_out and select > selection_score(best)
                if improved:
                    best = ({"val_acc": select, "epoch": epoch, "test_acc": rec.get("test_acc"), "selected_on": "val"}
                            if "val_acc" in rec else {"test_acc": rec.get("test_acc"), "epoch": epoch, "selected_on": "test"})
                ck = checkpoint(epoch)
                if is_main:
                    # The line first: a crash before the checkpoint is renamed redoes this epoch, and resume drops the line.
                    with metrics_path.open("a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                    atomic_save(ck, run_dir / CKPT_LAST)
                    if improved:
                        atomic_save(ck, run_dir / CKPT_BEST)
                last = rec
                bar.update(ep_task, advance=1, info=" ".join(f"{k} {rec[f'{k}_acc']:.3f}" for k in ("val", "test")
                                                              if f"{k}_acc" in rec))
                if epoch_stop and epoch + 1 < cfg.epochs:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise Interrupted(f"training interrupted; its state is saved in {run_dir / CKPT_LAST}; "
                             f"continue with `mmvid train --resume {run_dir}`") from None
    if not last and is_main and metrics_path.exists():  # resumed after its last epoch: nothing trained now
        recs = read_jsonl(metrics_path)
        last = recs[-1] if recs else {}
    summary = {"run_dir": str(run_dir), "epochs": cfg.epochs, "protocol": cfg.protocol, "last": last, "best": best}
    if is_main:
        write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2, default=float))
    return summary


@dataclass
class TrainingParts:
    """Everything one training step touches, built once by :func:`build_training`."""

    ctx: TrainContext
    augment: Any
    balancer: Any
    extra: torch.nn.Module | None  # a balancer's own trainable modules (outside DDP)
    scheduler: Any
    net: torch.nn.Module  # what the step calls: the model, DDP-wrapped and/or compiled
    aug_extra: torch.nn.Module | None = None  # an augmentation's own trainable modules (outside DDP)
    aux: AuxiliaryLoss | None = None  # the auxiliary heads' loss term (model.aux_loss), None when off

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in (self.extra, self.aug_extra) if m is not None for p in m.parameters()]


def make_optimizer(params, optim) -> torch.optim.Optimizer:
    """Adam(betas 0.9, 0.999) as the paper, or SGD with momentum as most reference implementations."""
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    return torch.optim.Adam(params, lr=optim.lr, betas=(0.9, 0.999), weight_decay=optim.weight_decay)


def build_training(cfg: TrainConfig, info: CacheInfo, run_dir: Path, rank: int = 0, world_size: int = 1) -> TrainingParts:
    """Seeded model, optimizer, scheduler, scaler, augmentation and balancer on the rank's device.

    Every rank builds the same initial model (same seed); DDP then keeps the ranks equal.
    """
    device = pick_device(cfg.device)
    if cfg.amp == "fp16" and device.type != "cuda":
        raise MmvidError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")
    seed_everything(cfg.seed)
    splits = make_splits(info, cfg.data.val_fraction, cfg.seed, cfg.protocol)
    modalities = cfg.data.modalities
    augment = AUGMENTS.build(cfg.augment.name, cfg.augment, modalities)
    balancer = BALANCERS.build(cfg.balance.name, cfg.balance, modalities)
    balancer.check(cfg.model, cfg.augment.name)

    model = build_model(cfg, info.num_classes).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(cfg.seed)  # same seed on every rank: mixing decisions agree
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.optim.step_size, cfg.optim.gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
    ctx = TrainContext(cfg, model, optimizer, scaler, device, gen, modalities, info.num_classes, info, splits, run_dir,
                       world_size=world_size, rank=rank)
    extra = balancer.setup(model, ctx)
    # Augmentations with trainable parts (MS-Mix's intensity heads) define ``setup`` like balancers.
    aug_extra = augment.setup(model, ctx)
    for module in (extra, aug_extra):
        if module is not None:
            module.to(device)
            optimizer.add_param_group({"params": [p for p in module.parameters() if p.requires_grad]})
    net = wrap_model(model, device, world_size, cfg.compile)
    aux = AuxiliaryLoss(cfg.model.aux_loss) if cfg.model.aux_loss else None
    return TrainingParts(ctx, augment, balancer, extra, scheduler, net, aug_extra, aux)


class AuxiliaryLoss:
    """The auxiliary unimodal-head term of Remix's concat baseline (MatthewMaxy/Remix_ICML2025 ``baseline.py``,
    ``train_epoch``: loss = loss_av + alpha loss_a + beta loss_v, alpha = beta = 0.5, every step), ``model.aux_loss``:

        L_aux = sum_m w_m CE(h_m(z_m), y~_m)

    h_m = ``model.aux_heads[m]`` (a Linear, (B, d_m) -> (B, C)) on the step's feature z_m (``ModelOutput.features``:
    after calibration and any feature mixing, what the fusion sees; the reference's pooled encoder output), y~_m
    the target z_m was mixed towards (the plain label without mixing, or with fused-stage mixing; see
    :func:`mmvid.augment.base.modality_mix`). Gradients reach the encoders, as in the reference. ``log()`` gives
    the epoch means of each unweighted CE(h_m(z_m), y~_m) as ``aux_loss_<m>``."""

    def __init__(self, weights: dict[str, float]) -> None:
        self.weights = dict(weights)
        self.means = EpochMeans()

    def __call__(self, model: MultimodalClassifier, out, y: torch.Tensor) -> torch.Tensor:
        terms = {m: mixed_cross_entropy(model.aux_heads[m](out.features[m]), y, modality_mix(out.mix, m))
                 for m in self.weights}
        values = torch.stack([v.detach().float() for v in terms.values()]).tolist()  # one sync for all heads
        self.means.add({f"aux_loss_{m}": v for m, v in zip(terms, values)})
        return sum(self.weights[m] * v for m, v in terms.items())

    def log(self, reduce=None) -> dict[str, float]:
        """This epoch's means over every rank's steps (``reduce``: the sum across ranks, None in one process);
        then reset for the next epoch."""
        keys = [f"aux_loss_{m}" for m in self.weights]  # the same vector on every rank
        local = [self.means.sums.get(k, 0.0) for k in keys] + [self.means.n]
        self.means = EpochMeans()
        total = reduce(torch.tensor(local, dtype=torch.float64)).tolist() if reduce is not None else local
        return {k: v / total[-1] for k, v in zip(keys, total)} if total[-1] else {}


def train_step(parts: TrainingParts, inputs: dict[str, torch.Tensor], y: torch.Tensor):
    """One optimisation step on a batch (any device): returns (ModelOutput, loss, y on the device).

    data -> forward + loss (autocast) -> backward (DDP all-reduce) -> unscale -> ``after_backward``
    -> clip -> step. Raises MmvidError naming the epoch and step when the loss, a gradient or a weight
    is not finite.
    """
    from mmvid.distributed import average_gradients

    ctx, balancer, cfg = parts.ctx, parts.balancer, parts.ctx.cfg
    inputs, y = to_device(inputs, ctx.device), y.to(ctx.device, non_blocking=True)
    ctx.batch_intensity = inputs.pop(INTENSITY_KEY, None)  # not a modality: for the augmentation (MS-Mix's SAL)
    clean = inputs
    inputs, y = balancer.on_batch(inputs, y, ctx)  # data stage
    with autocast(ctx.device, cfg.amp):
        out, base = parts.augment.compute(parts.net, inputs, y, ctx)  # forward + augmentation's loss
        if parts.aux is not None:  # the auxiliary heads' term of Remix's baseline (model.aux_loss; no balancer then)
            base = base + parts.aux(ctx.model, out, y)
    losses = []
    for focus in balancer.passes(ctx):  # one pass, or several on this forward (MLA: one per modality)
        ctx.focus = focus
        with autocast(ctx.device, cfg.amp):
            loss = balancer.loss(base, out, inputs, y, ctx)  # loss stage
        if not torch.isfinite(loss):
            check_finite_inputs(clean, ctx.info.path, f" at epoch {ctx.epoch + 1}, step {ctx.step}")  # the cache first
            raise diverged(f"loss became {float(loss.detach())}", ctx)
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.scaler.scale(loss).backward()  # DDP averages the model's gradients across ranks here
        average_gradients(parts.extra_parameters(), ctx.world_size)
        ctx.scaler.unscale_(ctx.optimizer)  # gradients are true values from here on
        balancer.after_backward(ctx.model, out, y, ctx)  # optimisation stage
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), cfg.optim.grad_clip)
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        check_finite_step(parts)
        losses.append(loss)
    ctx.focus = None
    ctx.step += 1
    loss = losses[0] if len(losses) == 1 else torch.stack([v.detach().float() for v in losses]).mean()
    return out, loss, y


def check_finite_step(parts: TrainingParts) -> None:
    """Stop when a step left non-finite gradients or weights, whatever caused them. The loss check alone
    misses a finite loss whose step diverges (lr=inf: finite gradients, NaN weights), above all on a run's
    last step. Under fp16 loss scaling an inf gradient is expected (the scaler skipped that step)."""
    ctx = parts.ctx
    params = [p for p in ctx.model.parameters()] + parts.extra_parameters()
    # Max-norms: finite exactly when every entry is (NaN propagates; no squares that could overflow); one sync.
    norms = {}
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if grads and not ctx.scaler.is_enabled():
        norms["gradients"] = torch.nn.utils.get_total_norm(grads, float("inf"))
    norms["weights"] = torch.nn.utils.get_total_norm([p.detach() for p in params], float("inf"))
    finite = torch.isfinite(torch.stack(list(norms.values()))).tolist()
    if not all(finite):
        what = " and ".join(k for k, ok in zip(norms, finite) if not ok)
        raise diverged(f"{what} became non-finite", ctx)


def diverged(what: str, ctx: TrainContext) -> MmvidError:
    """One line for a diverged step: what became non-finite, where, and the usual remedy."""
    return MmvidError(f"{what} at epoch {ctx.epoch + 1}, step {ctx.step}; lower optim.lr or try --amp off")


def fingerprint(model: torch.nn.Module) -> str:
    """SHA-1 of every parameter's bytes: equal on all DDP ranks exactly when their weights are."""
    import hashlib

    h = hashlib.sha1()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def wrap_model(model: MultimodalClassifier, device: torch.device, world_size: int, compile_: bool):
    """The callable of the training step: DDP across ranks, optionally ``torch.compile``-d.

    Attribute access falls through to the bare model (``net.unimodal_logits``, ``net.modalities``).
    """
    net: torch.nn.Module = model
    if world_size > 1:
        from mmvid.distributed import DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_:
        net = torch.compile(net)
    return net
