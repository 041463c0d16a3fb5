"""A torch Dataset over the HDF5 cache. The h5py handle is opened lazily inside each worker
(h5py handles cannot be pickled), so the Dataset itself is cheap to send to DataLoader workers.

Whatever a damaged cache makes h5py raise (a failed chunk checksum, an unreadable B-tree) becomes the
one-line :class:`~mmvid.data.cache.CacheDamaged`, in a worker as in the main process.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from mmvid.data.cache import CACHE_KEY, READ_ERRORS, damaged, nonfinite_rows, read_error
from mmvid.data.crop import BOX_KEY, crop_clip, draw_clip, flip_flow_u, resized_crop_batch

# A batch's per-clip intensity targets (B,) float32 when the loader was asked for them (``CacheDataset(intensity=)``);
# not a modality: the engine takes it out of the batch before the model sees it (engine.train_step).
INTENSITY_KEY = "clip_intensity"

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def frames_to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (..., T, H, W, 3) -> uint8 (..., T, 3, H, W). Frames stay uint8 through the DataLoader
    (4x fewer bytes to copy between processes and to the device); ``finish_batch`` normalises them."""
    return torch.as_tensor(frames).movedim(-1, -3)


def normalise_frames(x: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float (x / 255 - mean) / std, ImageNet statistics, on the tensor's device.
    A float input on the 0-255 scale (a batch ``resized_crop_batch`` made) is normalised in place.

    One allocation and two in-place passes: a batch of frames is megabytes, and every fresh
    allocation of that size costs page faults that dominated the loader (4 ms of 5 per batch of 4).
    """
    scale = (1.0 / (255.0 * IMAGENET_STD)).to(x.device)
    shift = (-IMAGENET_MEAN / IMAGENET_STD).to(x.device)
    return x.float().mul_(scale).add_(shift)


def finish_batch(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The last, batched step of decoding, run where the batch lives (GPU when training on one):
    uint8 video -> normalised float, float16 spectrogram -> float, and the spatial transform whose
    per-clip parameters the loader drew (``BOX_KEY``: train-time random resized crop and flip, or the
    test-time resize; mmvid.data.crop), for the whole batch at once. Every consumer of a loader's
    batches calls it (``engine.to_device``)."""
    out = dict(inputs)
    boxes = out.pop(BOX_KEY, None)
    if boxes is not None:
        for m in ("video", "flow"):
            if out.get(m) is not None:
                out[m] = resized_crop_batch(out[m], boxes)  # float from here; uint8 video keeps its 0-255 scale
        if out.get("flow") is not None:
            out["flow"] = flip_flow_u(out["flow"], boxes)
    if out.get("video") is not None and (out["video"].dtype == torch.uint8 or boxes is not None):
        out["video"] = normalise_frames(out["video"])
    if out.get("audio") is not None and out["audio"].dtype == torch.float16:
        out["audio"] = out["audio"].float()
    return out


def check_finite_inputs(inputs: dict[str, torch.Tensor], cache_path: str | Path | None, where: str = "") -> None:
    """Raise the cache-damage error when a batch read from ``cache_path`` holds NaN or inf.

    Called where a loss turns out non-finite, before blaming the learning rate: the cache stores
    finite values only (uint8 frames and flow, a log spectrogram of |STFT| + 1e-7), so a non-finite
    input can only come from a damaged cache. ``inputs``: modality -> (B, ...), as the loader gave them.
    """
    if cache_path is None:
        return
    for m, x in inputs.items():
        if torch.is_tensor(x) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
            bad = nonfinite_rows(x.detach().float().cpu().numpy())
            raise damaged(cache_path, f"NaN or inf in the {m} data of {len(bad)} clip(s) of a batch{where}")


def flow_to_tensor(flow: np.ndarray | torch.Tensor, bound: float) -> torch.Tensor:
    """uint8 (..., T, H, W, 2) quantised flow -> float pixels/frame (..., T, 2, H, W); 128 is zero (mmvid.data.flow)."""
    x = torch.as_tensor(flow).movedim(-1, -3).float()
    return x.sub_(128.0).mul_(2 * bound / 255.0)


def spec_to_tensor(spec: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(..., F, L) -> (..., 1, F, L), dtype kept: the cache's float16 crosses the DataLoader at half the
    bytes of float32 (moving batches between processes is the loader's main cost); ``finish_batch`` widens it."""
    return torch.as_tensor(spec).unsqueeze(-3)


class CacheDataset(Dataset):
    """Items: (dict modality -> tensor, label). Shapes: audio (1, F, L) float16, video (T, 3, S, S) uint8
    (both finished per batch by ``finish_batch``), flow (T, 2, S, S) float pixels/frame.

    ``train=True`` draws the training augmentation: one random resized crop (scale 0.5-1) and one
    horizontal flip shared by all frames of the clip (a flip of flow negates u). Items carry its
    parameters (``BOX_KEY``; frames stay at the cache's size), and ``finish_batch`` applies them
    batched on the device; with ``crop_in_loader`` (training on the CPU) the item is cropped at once.
    ``intensity`` (len(indices),): each row's intensity target, carried under ``INTENSITY_KEY``.
    ``crop="reference"``: one crop (scale 0.08-1) and flip per frame instead (mmvid.data.crop.draw_frame_boxes).
    """

    def __init__(self, path: str | Path, indices: np.ndarray, modalities: list[str], train: bool = False,
                 crop_size: int | None = None, flip: bool = True, random_crop: bool = True, flow_bound: float = 20.0,
                 in_memory: bool = False, crop_in_loader: bool = False, intensity: np.ndarray | None = None,
                 crop: str = "clip") -> None:
        self.path = str(path)
        self.intensity = None if intensity is None else np.asarray(intensity, dtype=np.float32)
        self.crop = crop
        self.crop_in_loader = crop_in_loader
        self.indices = np.asarray(indices, dtype=np.int64)
        self.modalities = list(modalities)
        self.train = train
        self.crop_size = crop_size
        self.flip = flip
        self.random_crop = random_crop
        self.flow_bound = flow_bound
        self._dsets: dict[str, h5py.Dataset] = {}  # opened lazily, per worker
        self._memory: dict[str, np.ndarray] | None = None
        try:
            with h5py.File(self.path, "r") as f:
                self.labels = f["labels"][:][self.indices]
                if in_memory:
                    self._memory = self._load(f)
        except READ_ERRORS as e:
            raise read_error(self.path, e) from None

    def _load(self, f: h5py.File) -> dict[str, np.ndarray]:
        """Every row of ``indices`` read at once (sorted, as HDF5 wants), finite-checked while in RAM anyway."""
        order = np.argsort(self.indices)
        memory = {}
        for m in self.modalities:
            arr = f[CACHE_KEY[m]][np.sort(self.indices)]
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise damaged(self.path, f"NaN or inf in the {CACHE_KEY[m]} of {len(nonfinite_rows(arr))} clip(s)")
            out = np.empty_like(arr)
            out[order] = arr
            memory[m] = out
        return memory

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_dsets"] = {}
        return state

    def _datasets(self) -> dict[str, h5py.Dataset]:
        # Opened on first use in each worker; the h5py.Dataset objects are kept because looking one
        # up by name costs as much as reading a clip's spectrogram.
        if not self._dsets:
            f = h5py.File(self.path, "r")  # each h5py.Dataset keeps its file open
            self._dsets = {m: f[CACHE_KEY[m]] for m in self.modalities}
        return self._dsets

    def raw(self, i: int) -> dict[str, np.ndarray]:
        if self._memory is not None:
            return {m: self._memory[m][i] for m in self.modalities}
        row = int(self.indices[i])
        try:
            return {m: d[row] for m, d in self._datasets().items()}
        except READ_ERRORS as e:  # e.g. "filter returned failure during read": a chunk failed its checksum
            raise read_error(self.path, e, f"row {row} unreadable") from None

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], int]:
        out = self._spatial(to_tensors(self.raw(i), self.flow_bound))
        if self.intensity is not None:
            out[INTENSITY_KEY] = torch.tensor(self.intensity[i])
        return out, int(self.labels[i])

    def _spatial(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = spatial_transform(out, self.train, self.crop_size, self.flip, self.random_crop, self.crop)
        return crop_clip(out, out.pop(BOX_KEY)) if self.crop_in_loader and BOX_KEY in out else out


def to_tensors(raw: dict[str, np.ndarray | torch.Tensor], flow_bound: float) -> dict[str, torch.Tensor]:
    """Cache arrays (one clip, or a batch with a leading B axis) -> model tensors, on their own device."""
    convert = {"audio": spec_to_tensor, "video": frames_to_tensor,
               "flow": lambda a: flow_to_tensor(a, flow_bound)}
    return {m: convert[m](arr) for m, arr in raw.items()}


def spatial_transform(out: dict[str, torch.Tensor], train: bool, crop_size: int | None, flip: bool,
                      random_crop: bool, crop: str = "clip") -> dict[str, torch.Tensor]:
    """One clip's video (T, 3, H, W) / flow (T, 2, H, W): draw its train-time crop and flip, or its test-time
    resize, as a ``BOX_KEY`` row (``crop="reference"``: one row per frame) that ``finish_batch`` applies to
    the whole batch on the device.

    ``clip`` draws from numpy's global generator (seeded, resumable), in the order they always had;
    ``reference`` from torch's, as torchvision's transforms in the reference loaders do.
    """
    visual = [m for m in out if m in ("video", "flow")]
    if visual:
        x = out[visual[0]]
        box = draw_clip(tuple(x.shape[-2:]), x.shape[-4], train, crop_size, flip, random_crop, crop)
        if box is not None:
            out[BOX_KEY] = box
    return out
