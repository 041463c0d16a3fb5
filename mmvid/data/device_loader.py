"""``--cache-on-gpu``: the whole split held as tensors on the training device, served in batches
without per-step I/O, host-to-device copies or worker processes; decoding to float and the
train-time crop/flip run on the device (``finish_batch``).

For caches that fit (CREMA-D at 3 frames: about 1 GB of uint8 frames + float16 spectrograms).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler

from mmvid.data.crop import BOX_KEY, crop_clip, draw_clip
from mmvid.data.torch_dataset import INTENSITY_KEY, CacheDataset, to_tensors


class DeviceLoader:
    """Iterates ``(inputs, y)`` like a DataLoader over ``dataset``: inputs modality -> (B, ...) on ``device``.

    Stored per clip in the cache's own dtypes (frames/flow uint8 (N, T, S, S, C), spectrogram float16
    (N, F, L)); each batch is gathered by index and converted (``to_tensors``) on the device, with each
    clip's crop/flip (or resize) drawn under ``BOX_KEY`` as the DataLoader's items carry it.
    Order: ``sampler`` if given (``set_epoch`` passes through), else a torch.randperm when ``shuffle``.
    """

    def __init__(self, dataset: CacheDataset, batch_size: int, device: torch.device, sampler: Sampler | None = None,
                 shuffle: bool = False) -> None:
        if dataset._memory is None:
            raise ValueError("DeviceLoader needs a CacheDataset built with in_memory=True")
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device
        self.sampler = sampler
        self.shuffle = shuffle
        self.tensors = {m: torch.from_numpy(arr).to(device) for m, arr in dataset._memory.items()}
        self.labels = torch.as_tensor(dataset.labels, dtype=torch.long).to(device)
        self.intensity = None if dataset.intensity is None else torch.from_numpy(dataset.intensity).to(device)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        return math.ceil(n / self.batch_size)

    def _order(self) -> torch.Tensor:
        if self.sampler is not None:
            return torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)
        n = len(self.dataset)
        return torch.randperm(n) if self.shuffle else torch.arange(n)

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        ds = self.dataset
        order = self._order().to(self.device)
        visual = [m for m in ds.modalities if m in ("video", "flow")]
        shape = self.tensors[visual[0]].shape if visual else (0,) * 5  # (N, T, H, W, C)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            inputs = to_tensors({m: t[idx] for m, t in self.tensors.items()}, ds.flow_bound)
            boxes = [draw_clip((shape[2], shape[3]), shape[1], ds.train, ds.crop_size, ds.flip, ds.random_crop, ds.crop)
                     for _ in range(len(idx))] if visual else []
            if boxes and boxes[0] is not None and ds.crop_in_loader:  # as the DataLoader's items would be
                clips = [crop_clip({m: x[i] for m, x in inputs.items()}, b) for i, b in enumerate(boxes)]
                inputs = {m: torch.stack([c[m] for c in clips]) for m in inputs}
            elif boxes and boxes[0] is not None:  # drawn clip by clip, in the DataLoader's order
                inputs[BOX_KEY] = torch.stack(boxes).to(self.device)
            if self.intensity is not None:
                inputs[INTENSITY_KEY] = self.intensity[idx]
            yield inputs, self.labels[idx]
