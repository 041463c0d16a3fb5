"""The batched, on-device crop/flip/resize (mmvid.data.crop) against the per-clip torchvision transform it
replaced: equal on identical parameters, and a training loader draws the same parameters in the same
order under the same seed as the per-clip code did."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from mmvid.data.crop import BOX_KEY, draw_box, resized_crop_batch
from mmvid.data.torch_dataset import IMAGENET_STD, CacheDataset, finish_batch, normalise_frames


def per_clip(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """The former per-clip path: torchvision's resized_crop (antialiased) of one clip, then its flip."""
    top, left, h, w, flipped, out = box.tolist()
    y = TF.resized_crop(x, top, left, h, w, [out, out], antialias=True)
    return y.flip(-1) if flipped else y


def random_boxes(n: int, size: int, out: int, rng: np.random.Generator) -> torch.Tensor:
    rows = []
    for _ in range(n):
        h, w = rng.integers(4, size + 1, 2)
        rows.append([rng.integers(0, size - h + 1), rng.integers(0, size - w + 1), h, w, rng.integers(0, 2), out])
    return torch.tensor(np.array(rows, dtype=np.int64))


@pytest.mark.parametrize("out", [48, 20, 77])  # the image size (always enlarging), shrinking (antialiased), mixed
def test_batched_crop_equals_torchvision_per_clip(out):
    rng = np.random.default_rng(out)
    x = torch.rand(12, 2, 3, 48, 48)
    boxes = random_boxes(12, 48, out, rng)
    boxes[0, :4] = torch.tensor([0, 0, 48, 48])  # the whole image, and a 1-pixel-wide sliver
    boxes[1, :4] = torch.tensor([0, 5, 48, 1])
    batched = resized_crop_batch(x, boxes)
    reference = torch.stack([per_clip(x[b], boxes[b]) for b in range(len(x))])
    assert batched.shape == (12, 2, 3, out, out)
    assert torch.allclose(batched, reference, atol=1e-5, rtol=0)  # float rounding only
    # On uint8 frames torchvision rounds its output to uint8 (fixed-point weights): within one level.
    xu = (x * 255).round().to(torch.uint8)
    ref_u8 = torch.stack([per_clip(xu[b], boxes[b]) for b in range(len(x))]).float()
    assert (resized_crop_batch(xu, boxes) - ref_u8).abs().max() <= 1.0 + 1e-4


def test_flip_negates_flow_u_of_flipped_clips_only():
    flow = torch.randn(2, 3, 2, 16, 16)
    boxes = torch.tensor([[0, 0, 16, 16, 1, 16], [0, 0, 16, 16, 0, 16]])
    out = finish_batch({"flow": flow.clone(), BOX_KEY: boxes})["flow"]
    assert torch.allclose(out[0, :, 0], -flow[0, :, 0].flip(-1), atol=1e-6)
    assert torch.allclose(out[0, :, 1], flow[0, :, 1].flip(-1), atol=1e-6)
    assert torch.allclose(out[1], flow[1], atol=1e-6)


def old_item_video(ds: CacheDataset, i: int) -> torch.Tensor:
    """The per-clip training transform as CacheDataset applied it before, re-typed: the same numpy draws in the
    same order, torchvision's resized_crop of the uint8 frames in the loader, normalised per batch."""
    frames = torch.as_tensor(ds.raw(i)["video"]).movedim(-1, -3)
    size = frames.shape[-1]
    scale = np.random.uniform(0.5, 1.0)
    ratio = np.exp(np.random.uniform(np.log(3 / 4), np.log(4 / 3)))
    w = int(round(min(size, np.sqrt(scale * ratio) * size)))
    h = int(round(min(size, np.sqrt(scale / ratio) * size)))
    top, left = np.random.randint(0, size - h + 1), np.random.randint(0, size - w + 1)
    x = TF.resized_crop(frames, top, left, h, w, [size, size], antialias=True)
    return normalise_frames(x.flip(-1) if np.random.rand() < 0.5 else x)


def test_training_batches_match_the_per_clip_transform_under_the_seed(tiny_ws):
    """Same seed -> the same crops and flips as the per-clip code drew (so the augmentation's distribution
    and resumed runs are unchanged); pixels within one uint8 level (the old path rounded its crop to uint8)."""
    from torch.utils.data import DataLoader

    from mmvid.data.cache import read_info

    info = read_info(tiny_ws / "caches" / "demo.h5")
    rows = info.indices("train")[:10]
    ds = CacheDataset(info.path, rows, ["audio", "video"], train=True)
    np.random.seed(3)
    batches = [finish_batch(x)["video"] for x, _ in DataLoader(ds, batch_size=4)]
    np.random.seed(3)
    reference = torch.stack([old_item_video(ds, i) for i in range(len(rows))])
    got = torch.cat(batches)
    assert got.shape == reference.shape
    level = float((1 / (255 * IMAGENET_STD)).max())  # one uint8 level, normalised
    assert (got - reference).abs().max() <= level + 1e-4
    assert (got - reference).abs().mean() < 0.4 * level  # rounding (mean 1/4 level), not a different crop
    # Training on the CPU crops each item in the loader: the former per-clip path, exactly.
    per_item = CacheDataset(info.path, rows, ["audio", "video"], train=True, crop_in_loader=True)
    np.random.seed(3)
    assert torch.equal(torch.cat([finish_batch(x)["video"] for x, _ in DataLoader(per_item, batch_size=4)]), reference)


def test_test_time_resize_is_a_box_over_the_whole_image():
    assert draw_box(32, False, None, True, True) is None
    assert draw_box(32, False, 16, True, True).tolist() == [0, 0, 32, 32, 0, 16]
    np.random.seed(0)
    boxes = torch.stack([draw_box(32, True, 24, True, True) for _ in range(200)])
    area = (boxes[:, 2] * boxes[:, 3]).float() / 32 ** 2
    assert area.min() >= 0.45 and area.max() <= 1.0 and (boxes[:, 5] == 24).all()
    assert 0.3 < boxes[:, 4].float().mean() < 0.7


def test_boxes_of_rectangular_frames_stay_inside_and_keep_the_whole_frame_when_asked():
    """Frames kept at their aspect (prepare --frame-size short-side): clip crops keep scale 0.5-1 of the area and
    stay inside; no random crop means the whole frame; test time resizes the whole frame to a square."""
    assert draw_box((36, 48), False, None, True, True).tolist() == [0, 0, 36, 48, 0, 36]
    np.random.seed(1)
    assert all(draw_box((36, 48), True, 24, False, False).tolist() == [0, 0, 36, 48, 0, 24] for _ in range(5))
    boxes = torch.stack([draw_box((36, 48), True, 24, True, True) for _ in range(300)])
    top, left, h, w = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    assert ((top + h) <= 36).all() and ((left + w) <= 48).all() and (h >= 1).all() and (w >= 1).all()
    area = (h * w).float() / (36 * 48)
    assert area.min() >= 0.4 and area.max() <= 1.0


def test_per_frame_boxes_crop_each_frame_by_its_own_box():
    from mmvid.data.crop import crop_clip

    x = torch.rand(2, 3, 3, 30, 40)
    boxes = torch.tensor([[[0, 0, 30, 40, 0, 16], [5, 6, 10, 12, 1, 16], [2, 3, 20, 20, 0, 16]],
                          [[1, 1, 8, 9, 1, 16], [0, 0, 30, 40, 1, 16], [10, 20, 20, 20, 0, 16]]])
    batched = resized_crop_batch(x, boxes)
    ref = torch.stack([torch.stack([per_clip(x[b, t:t + 1], boxes[b, t])[0] for t in range(3)]) for b in range(2)])
    assert batched.shape == (2, 3, 3, 16, 16) and torch.allclose(batched, ref, atol=1e-5)
    xu = (x * 255).round().to(torch.uint8)
    per_item = torch.stack([crop_clip({"video": xu[b]}, boxes[b])["video"] for b in range(2)]).float()
    assert (per_item - resized_crop_batch(xu, boxes)).abs().max() <= 1.0 + 1e-4
