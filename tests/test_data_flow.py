"""Optical flow: the one stored quantisation (128 = zero), computed flow on a known motion of a real
frame, and the precomputed UCF-101 TV-L1 / RGB frame folders."""

from __future__ import annotations

import numpy as np
import pytest

from mmvid.data.decode import DecodeError
from mmvid.data.flow import compute_flow, dequantise_flow, quantise_flow, read_flow_dir, read_rgb_dir
from mmvid.data.prepare import PrepareParams

UCF = "ucf101/UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"
FRAMES = "ucf101/frames/v_ApplyEyeMakeup_g01_c01"


def test_quantisation_zero_is_128_and_round_trip_within_half_a_step():
    bound = 20.0
    f = np.linspace(-19.9, 19.9, 1001, dtype=np.float32)
    q = quantise_flow(np.stack([f, -f], -1), bound)
    assert q.dtype == np.uint8
    assert quantise_flow(np.zeros(2), bound).tolist() == [128, 128]
    step = 2 * bound / 255
    assert np.abs(dequantise_flow(q, bound) - np.stack([f, -f], -1)).max() <= step / 2 + 1e-5
    assert quantise_flow(np.array([-100.0, 100.0]), bound).tolist() == [0, 255]  # clipped at the bound


def test_cache_reader_dequantises_like_the_writer():
    from mmvid.data.torch_dataset import flow_to_tensor

    q = np.random.default_rng(0).integers(0, 256, size=(3, 4, 4, 2), dtype=np.uint8)
    got = flow_to_tensor(q, 20.0).numpy()  # (T, 2, H, W)
    assert np.allclose(got, np.moveaxis(dequantise_flow(q, 20.0), -1, 1), atol=1e-5)


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_computed_flow_recovers_a_known_shift_of_a_real_frame(shared_data, method):
    import cv2

    from mmvid.data.decode import decode_frames

    frames, _ = decode_frames(shared_data / UCF, 1, None, None)  # one native 320x240 frame
    first = frames[0]
    dx, dy = 3.0, -2.0  # content moves 3 px right and 2 px up
    second = cv2.warpAffine(first, np.float32([[1, 0, dx], [0, 1, dy]]), (first.shape[1], first.shape[0]),
                            borderMode=cv2.BORDER_REFLECT)
    flow = compute_flow(first, second, method)
    assert flow.shape == (240, 320, 2)
    inner = flow[40:-40, 40:-40].reshape(-1, 2)
    assert np.median(inner[:, 0]) == pytest.approx(dx, abs=0.25)
    assert np.median(inner[:, 1]) == pytest.approx(dy, abs=0.25)


def test_precomputed_flow_folder_is_stored_unchanged(shared_data):
    import cv2

    folder = shared_data / FRAMES
    # native rate: T = 3 of the 5 flow frames are the centres of 3 segments -> x/y_00001, 00003, 00005
    p = PrepareParams(fps=None, num_frames=3, image_size=112)
    flow = read_flow_dir(folder, p)
    assert flow.shape == (3, 112, 112, 2) and flow.dtype == np.uint8
    for t, k in enumerate((1, 3, 5)):
        for c, axis in enumerate("xy"):
            jpg = cv2.imread(str(folder / f"{axis}_{k:05d}.jpg"), cv2.IMREAD_GRAYSCALE)
            assert abs(float(np.median(flow[t, ..., c])) - float(np.median(jpg))) <= 1  # no re-quantisation
    # at 1 fps the 5 frames (0.2 s at 25 fps) give one candidate, the frame shown at 0.5 s: the last
    one = read_flow_dir(folder, PrepareParams(fps=1.0, num_frames=3, image_size=112))
    assert np.array_equal(one[0], flow[2]) and np.array_equal(one[0], one[2])


def test_precomputed_rgb_folder_matches_the_decoded_video(shared_data):
    import cv2

    from mmvid.data.decode import decode_frames

    folder = shared_data / FRAMES
    rgb = read_rgb_dir(folder, PrepareParams(fps=None, num_frames=2, image_size=112))  # img_00003, img_00008
    video, _ = decode_frames(shared_data / UCF, 164, None, None)  # all 164 native frames, in order
    small = lambda i: cv2.resize(video[i], (112, 112), interpolation=cv2.INTER_AREA).astype(float)  # noqa: E731
    # img_%05d k is the decoded frame with 0-based index k (README); JPEG costs about one grey level
    assert np.abs(rgb[0] - small(3)).mean() < 1.5 and np.abs(rgb[1] - small(8)).mean() < 1.5
    assert np.abs(rgb[0] - small(8)).mean() > 2.5


def test_flow_folder_problems_are_clip_errors(shared_data, tmp_path):
    p = PrepareParams(fps=None, num_frames=3, image_size=32)
    with pytest.raises(DecodeError, match="flow folder not found"):
        read_flow_dir(tmp_path / "nope", p)
    (tmp_path / "x_00001.jpg").symlink_to(shared_data / FRAMES / "x_00001.jpg")
    with pytest.raises(DecodeError, match="1 x_\\*.jpg and 0 y_\\*.jpg"):
        read_flow_dir(tmp_path, p)
