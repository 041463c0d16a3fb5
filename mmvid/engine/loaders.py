"""The rows a run trains, validates and tests on (:func:`make_splits`), and the loaders that serve them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmvid.config import TrainConfig
from mmvid.data.cache import CACHE_KEY, CacheInfo
from mmvid.data.device_loader import DeviceLoader
from mmvid.data.params import check_prepared
from mmvid.data.sources import stratified_split
from mmvid.data.torch_dataset import CacheDataset, finish_batch
from mmvid.engine.runtime import worker_init
from mmvid.errors import MmvidError


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
        split_of = stratified_split(list(info.labels[train]), val_fraction, seed)  # "train" or "test" per row
        is_val = np.asarray([s == "test" for s in split_of])
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
        return DeviceLoader(ds, batch_size or cfg.data.batch_size, device, sampler, shuffle)
    workers = cfg.data.workers
    return DataLoader(ds, batch_size=batch_size or cfg.data.batch_size, shuffle=shuffle, sampler=sampler,
                      num_workers=workers, pin_memory=torch.cuda.is_available(), drop_last=False,
                      persistent_workers=workers > 0, worker_init_fn=worker_init if workers > 0 else None)


def to_device(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move a loader's batch to ``device`` and finish decoding it there (uint8 frames -> normalised float)."""
    return finish_batch({k: v.to(device, non_blocking=True) for k, v in inputs.items()})
