"""The spatial augmentation of frames and flow, batched on the device.

Each clip's parameters are drawn where the clip is read (``draw_box``, in the loader's worker or the
DeviceLoader, from numpy's seeded global generator, as before), travel with the batch as one small
int64 row under ``BOX_KEY``, and ``resized_crop_batch`` applies them to the whole batch at once after it
reached the device (``dataset.finish_batch``): one random resized crop and one horizontal flip per clip,
shared by its frames, or the test-time resize.

``data.crop: reference`` draws instead one box per frame (``draw_frame_boxes``; rows (T, 6)) as the
OGM-GE lineage's loaders do: torchvision's ``RandomResizedCrop`` parameters (area scale U(0.08, 1),
``RandomResizedCrop.get_params``, from torch's generator) and a flip ``torch.rand(1) < 0.5``, frame by
frame in that order, so that equal torch seeds give the reference's draws; at test time every frame is
resized whole to ``crop x crop``, as ``Resize((224, 224))`` does.

The resampling is torchvision's ``resized_crop(..., antialias=True)`` (bilinear, antialiased when
shrinking: PyTorch's separable ``_upsample_bilinear2d_aa`` filter), computed as K-tap gathers along
rows, then columns, with per-clip indices and weights; a flip reverses the column taps. On float input
it equals the per-clip torchvision call to float rounding (tests/test_crop.py).

When training on the CPU, the batch's "device" is the main process, and these gathers there cost more
than torchvision's SIMD uint8 resize spread over the loader's workers (measured: 53 vs 165 samples/s at
2 workers on 2 cores, benchmarks/bench_loader.py); ``crop_clip`` applies the same box per clip in the
loader instead (``CacheDataset(crop_in_loader=True)``, chosen by ``engine.make_loader``).
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import RandomResizedCrop

BOX_KEY = "crop_box"  # (B, 6) int64: top, left, height, width, flipped, output size; (B, T, 6): one per frame


REFERENCE_SCALE = (0.08, 1.0)  # torchvision RandomResizedCrop's default, which the reference loaders use
CROP_RATIO = (3 / 4, 4 / 3)


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def draw_box(size: int | tuple[int, int], train: bool, crop_size: int | None, flip: bool,
             random_crop: bool) -> torch.Tensor | None:
    """One clip's box, drawn as torchvision's RandomResizedCrop does (area scale U(0.5, 1), log-uniform
    aspect ratio in [3/4, 4/3], sides clipped to the image, a uniform position), then a flip with
    probability 1/2; None when nothing is to be done (test time at the cache's own square size).
    ``size``: the frame's side, or (height, width); the output is ``crop_size`` square (default: the
    frame's short side)."""
    h_img, w_img = _hw(size)
    crop = crop_size or min(h_img, w_img)
    if not train:
        return None if crop == h_img == w_img else torch.tensor([0, 0, h_img, w_img, 0, crop])
    scale = np.random.uniform(0.5, 1.0) if random_crop else 1.0
    ratio = np.exp(np.random.uniform(np.log(3 / 4), np.log(4 / 3))) if random_crop else 1.0
    side = np.sqrt(h_img * w_img)  # exactly the side of a square frame: the draws of square frames are unchanged
    w = int(round(min(w_img, np.sqrt(scale * ratio) * side)))
    h = int(round(min(h_img, np.sqrt(scale / ratio) * side)))
    if not random_crop:  # the whole frame, whatever its shape
        h, w = h_img, w_img
    top, left = np.random.randint(0, h_img - h + 1), np.random.randint(0, w_img - w + 1)
    flipped = flip and np.random.rand() < 0.5
    return torch.tensor([top, left, h, w, int(flipped), crop])


def draw_frame_boxes(size: int | tuple[int, int], frames: int, train: bool, crop_size: int | None, flip: bool,
                     random_crop: bool) -> torch.Tensor:
    """(T, 6) boxes of ``data.crop: reference``: for each frame in turn, torchvision's
    ``RandomResizedCrop(crop, scale=(0.08, 1))`` parameters (``get_params``, torch's generator: up to 10
    tries of area scale and log-uniform ratio, then a central fallback) and ``RandomHorizontalFlip``'s
    ``torch.rand(1) < 0.5``, the order of ``transforms.Compose([RandomResizedCrop(224),
    RandomHorizontalFlip(), ...])`` applied frame by frame. Test time: the whole frame resized to
    ``crop x crop`` (``Resize((224, 224))``). ``random_crop=False`` keeps the whole frame, ``flip=False``
    draws no flip."""
    h_img, w_img = _hw(size)
    crop = crop_size or min(h_img, w_img)
    rows = []
    for _ in range(frames):
        top, left, h, w = 0, 0, h_img, w_img
        flipped = False
        if train:
            if random_crop:
                top, left, h, w = RandomResizedCrop.get_params(torch.empty(0, h_img, w_img), list(REFERENCE_SCALE),
                                                               list(CROP_RATIO))
            flipped = flip and bool(torch.rand(1) < 0.5)
        rows.append([top, left, h, w, int(flipped), crop])
    return torch.tensor(rows, dtype=torch.int64)


def draw_clip(size: int | tuple[int, int], frames: int, train: bool, crop_size: int | None, flip: bool,
              random_crop: bool, mode: str = "clip") -> torch.Tensor | None:
    """A clip's ``BOX_KEY`` value under ``data.crop``: ``clip`` (one box, ``draw_box``) or ``reference``
    (one per frame, ``draw_frame_boxes``)."""
    if mode == "reference":
        return draw_frame_boxes(size, frames, train, crop_size, flip, random_crop)
    return draw_box(size, train, crop_size, flip, random_crop)


def resample_taps(start: torch.Tensor, length: torch.Tensor, out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices and weights, (B, out, K), of resizing ``[start, start + length)`` of an axis to ``out``.

    PyTorch's antialiased bilinear filter (``_compute_weights_aa``): output i is centred at
    c = s (i + 0.5), s = length / out; a triangle of half-width max(s, 1) over the pixels
    [int(c - support + 0.5), int(c + support + 0.5)) of the crop, weights normalised to sum 1.
    Taps beyond a clip's support get weight 0 (and a valid index).
    """
    length = length.double()
    s = (length / out)[:, None]  # (B, 1)
    support = torch.clamp(s, min=1.0)
    center = s * (torch.arange(out, dtype=torch.float64) + 0.5)  # (B, out)
    lo = torch.clamp(torch.trunc(center - support + 0.5), min=0)
    hi = torch.minimum(torch.trunc(center + support + 0.5), length[:, None])
    k = int((hi - lo).max())
    j = lo[..., None] + torch.arange(k, dtype=torch.float64)  # (B, out, K) pixel of the crop
    w = torch.clamp(1 - ((j - center[..., None] + 0.5) / support[..., None]).abs(), min=0)
    w = torch.where(j < hi[..., None], w, 0.0)
    w = w / w.sum(-1, keepdim=True)
    idx = (torch.clamp(j, max=length[:, None, None] - 1) + start.double()[:, None, None]).long()
    return idx, w.float()


def _gather_sum(x: torch.Tensor, dim: int, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_k w[..., k] * x.gather(dim, idx[..., k]); x (B, N, H, W); idx/w (B, out, K) along ``dim`` (2 or 3)."""
    b, n, h, wd = x.shape
    out = idx.shape[1]
    shape = (b, n, out, wd) if dim == 2 else (b, n, h, out)
    acc = None
    for k in range(idx.shape[-1]):
        i = idx[:, None, :, k, None] if dim == 2 else idx[:, None, None, :, k]
        wk = w[:, None, :, k, None] if dim == 2 else w[:, None, None, :, k]
        g = torch.gather(x, dim, i.expand(shape))
        acc = g * wk if acc is None else acc.addcmul_(g, wk)
    return acc


def resized_crop_batch(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """x (B, ..., H, W) uint8 or float -> float (B, ..., S, S): clip b's box ``boxes[b]`` (``BOX_KEY`` rows)
    resized to S = boxes[:, 5] (one size per batch) and, where boxes[b, 4], flipped left-right.
    Per-frame boxes (B, T, 6) (``data.crop: reference``) apply to x (B, T, ..., H, W) frame by frame."""
    boxes = boxes.cpu()
    if boxes.dim() == 3:
        return resized_crop_batch(x.flatten(0, 1), boxes.flatten(0, 1)).unflatten(0, tuple(boxes.shape[:2]))
    size = int(boxes[0, 5])
    rows, rw = resample_taps(boxes[:, 0], boxes[:, 2], size)
    cols, cw = resample_taps(boxes[:, 1], boxes[:, 3], size)
    flipped = boxes[:, 4].bool()[:, None, None]
    cols, cw = torch.where(flipped, cols.flip(1), cols), torch.where(flipped, cw.flip(1), cw)
    lead = x.shape[:-2]
    flat = x.reshape(lead[0], -1, *x.shape[-2:])
    dev = x.device
    y = _gather_sum(flat, 2, rows.to(dev), rw.to(dev))
    y = _gather_sum(y, 3, cols.to(dev), cw.to(dev))
    return y.reshape(*lead, size, size)


def flip_flow_u(flow: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """A mirrored flow field points the other way: negate u (channel 0 of (B, T, 2, S, S)) of flipped clips
    (of flipped frames, with per-frame boxes (B, T, 6))."""
    sign = 1.0 - 2.0 * boxes[..., 4].to(flow.device, flow.dtype)
    flow[:, :, 0] *= (sign[:, None] if sign.dim() == 1 else sign)[..., None, None]
    return flow


def crop_clip(out: dict[str, torch.Tensor], box: torch.Tensor) -> dict[str, torch.Tensor]:
    """One clip's video (T, 3, S, S) uint8 / flow (T, 2, S, S): ``box`` applied at once with torchvision's
    resized_crop (its uint8 kernel rounds to uint8: within one level of ``resized_crop_batch``), or, with
    per-frame boxes (T, 6), each frame's own."""
    if box.dim() == 2:
        frames = [crop_clip({m: out[m][t:t + 1] for m in ("video", "flow") if m in out}, b) for t, b in enumerate(box)]
        for m in ("video", "flow"):
            if m in out:
                out[m] = torch.cat([f[m] for f in frames])
        return out
    top, left, h, w, flipped, size = box.tolist()
    for m in ("video", "flow"):
        if m in out:
            x = TF.resized_crop(out[m], top, left, h, w, [size, size], antialias=True)
            if flipped:
                x = x.flip(-1)
                if m == "flow":
                    x[:, 0] = -x[:, 0]
            out[m] = x
    return out
