"""The reference protocol's inputs (docs/methods.md, "Reference protocol (data)") against the reference code,
re-implemented below from reading it (never copied), on the real clips of ../shared/data:

* GeWu-Lab/OGM-GE_CVPR2022 (343dc1d): ``data/CREMAD/video_preprocessing.py`` (``video2frame_update``: a
  1-fps folder of OpenCV JPEGs, frame k * int(fps)), ``dataset/CramedDataset.py`` (the first file of that
  folder; train ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip()`` per frame, test ``Resize((224, 224))``;
  its audio lines), ``dataset/dataset.py`` (Kinetics-Sounds: files ``t = seg * i + 1``, seg = n // 3, of the
  10-file folders of ``pre-processing/AVE&CREMAD/video2frame-1fps.py`` (410775b): the frame at
  round((i + 0.5) * fps) of each second), ``data/KineticSound/process_audio.py`` (the Kaldi filterbank);
* MatthewMaxy/Remix_ICML2025 (80898aa): ``datasets/dataloader.py`` (``AV_CD_Dataset``: two frames,
  index min(i * seg + seg // 2, n - 1), seg = n // 2, of a 1-fps folder).

Crops are compared on equal torch seeds: mmvid draws torchvision's ``RandomResizedCrop`` parameters and the
flip from torch's generator in the reference's order, so the boxes are identical; the pixels differ only by
the resamplers' uint8 rounding (PIL's fixed point vs PyTorch's), within one grey level.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import av
import cv2
import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from torchvision import transforms

from mmvid.config import resolve_config
from mmvid.data.cache import read_info
from mmvid.data.crop import BOX_KEY
from mmvid.data.decode import decode_audio, decode_frames
from mmvid.data.features import kaldi_fbank, log_spectrogram, silent_audio
from mmvid.data.params import PrepareParams
from mmvid.data.torch_dataset import CacheDataset, finish_batch
from mmvid.errors import MmvidError
from mmvid.workflows import run_prepare

QUIET = Console(quiet=True)
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
LEVEL = 1 / (255 * min(STD))  # one uint8 grey level after Normalize, in the largest channel unit
CREMAD = ["1001_DFA_ANG_XX", "1001_DFA_DIS_XX", "1001_DFA_FEA_XX", "1001_DFA_HAP_XX", "1001_DFA_NEU_XX",
          "1001_DFA_SAD_XX"]


# ----------------------------------------------------------------------------- the references, re-implemented


def ogm_ge_cremad_folder(video: Path, out: Path) -> list[Path]:
    """video_preprocessing.py ``video2frame_update(frame_kept_per_second=1)``: frame ``count`` is written as
    ``{count:05d}.jpg`` by ``cv2.imencode('.jpg', bgr)`` when count % int(fps) == 0 (frame_id 0 of each
    int(fps)-frame period). Returns the files in name (= time) order."""
    out.mkdir(parents=True, exist_ok=True)
    vid = cv2.VideoCapture(str(video))
    fps = int(vid.get(cv2.CAP_PROP_FPS))
    n = vid.get(cv2.CAP_PROP_FRAME_COUNT)
    count, frame_id = 0, 0
    while count < n:
        ret, image = vid.read()
        if not ret:
            break
        if count % fps == 0:
            frame_id = 0
        if frame_id < fps and frame_id % fps == 0:
            cv2.imencode(".jpg", image)[1].tofile(str(out / f"{count:05d}.jpg"))
        frame_id += 1
        count += 1
    vid.release()
    return sorted(out.iterdir())


def reference_train_transform():
    return transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                               transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def reference_test_transform():
    return transforms.Compose([transforms.Resize(size=(224, 224)), transforms.ToTensor(),
                               transforms.Normalize(MEAN, STD)])


def reference_frames(files: list[Path], transform) -> torch.Tensor:
    """(T, 3, 224, 224): each frame ``Image.open(...).convert('RGB')`` then ``transform``, in file order, as
    CramedDataset / AV_CD_Dataset loop over their chosen files."""
    return torch.stack([transform(Image.open(f).convert("RGB")) for f in files])


def reference_draws(sizes: list[tuple[int, int]]) -> list[list[int]]:
    """The parameters the train transform draws for frames of these (h, w), in its order: per frame,
    ``RandomResizedCrop.get_params(img, (0.08, 1), (3/4, 4/3))`` then ``torch.rand(1) < 0.5``."""
    rows = []
    for h, w in sizes:
        i, j, ch, cw = transforms.RandomResizedCrop.get_params(torch.empty(3, h, w), [0.08, 1.0], [3 / 4, 4 / 3])
        rows.append([i, j, ch, cw, int(bool(torch.rand(1) < 0.5)), 224])
    return rows


def ogm_ge_ks_positions(total_frames: int, fps: float) -> list[int]:
    """video2frame-1fps.py's ``save_frame_index_arr``: for i < 10, round((0.5 + i) * fps), folded into the
    last (partial) second when past the end; written as frame_{i+1:05d}.jpg."""
    last = int(total_frames % fps) or int(fps)
    last_start = total_frames - last
    out = []
    for i in range(10):
        pos = round((1 / 2 + i) * fps)
        out.append(pos if pos <= total_frames else last_start + 1 + ((pos - last_start - 1) % last))
    return out


def ogm_ge_ks_files(file_num: int, pick_num: int = 3) -> list[int]:
    """dataset/dataset.py: t = seg * i + 1 (1-based file numbers), seg = int(file_num / pick_num)."""
    seg = int(file_num / pick_num)
    return [seg * i + 1 for i in range(pick_num)]


def remix_test_indices(file_num: int, pick_num: int = 2) -> list[int]:
    """AV_CD_Dataset (test mode): index = min(i * seg + int(seg / 2), file_num - 1), seg = int(file_num / 2)."""
    seg = int(file_num / pick_num)
    return [min(i * seg + int(seg / 2), file_num - 1) for i in range(pick_num)]


def kaldi_fbank_f64(wave: np.ndarray, sr: int, n_mels: int = 128) -> np.ndarray:
    """torchaudio.compliance.kaldi.fbank with process_audio.py's arguments (htk_compat, use_energy=False,
    window_type='hanning', dither=0, frame_shift=10) and defaults (frame_length 25 ms, preemphasis 0.97,
    remove_dc_offset, round_to_power_of_two, snip_edges, low_freq 20, high_freq = Nyquist, use_power,
    use_log_fbank), re-typed in float64 from its formulas."""
    shift, size = int(sr * 0.010), int(sr * 0.025)
    n_fft = 1
    while n_fft < size:
        n_fft *= 2
    m = 1 + (len(wave) - size) // shift
    frames = np.stack([wave[k * shift:k * shift + size] for k in range(m)]).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    frames = frames - 0.97 * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames *= 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / (size - 1))  # symmetric Hann
    power = np.abs(np.fft.rfft(frames, n=n_fft)) ** 2

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    lo, hi = mel(20.0), mel(sr / 2)
    delta = (hi - lo) / (n_mels + 1)
    b = np.arange(n_mels)[:, None]
    left, centre, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
    f = mel(sr / n_fft * np.arange(n_fft // 2))[None]
    banks = np.maximum(0.0, np.minimum((f - left) / (centre - left), (right - f) / (right - centre)))
    banks = np.pad(banks, ((0, 0), (0, 1)))  # the Nyquist bin: weight 0
    return np.log(np.maximum(power @ banks.T, np.finfo(np.float32).eps))


def process_audio_py(wave: np.ndarray, sr: int) -> np.ndarray:
    """KineticSound/process_audio.py after torchaudio.load: waveform - mean, fbank, ZeroPad2d / cut to 1024 rows,
    (fbank - (-4.503877)) / (5.141276 * 2)."""
    fb = kaldi_fbank_f64(wave - wave.mean(), sr)
    p = 1024 - fb.shape[0]
    fb = np.pad(fb, ((0, p), (0, 0))) if p > 0 else fb[:1024]
    return (fb - (-4.503877)) / (5.141276 * 2)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def remix_cache(shared_data, tmp_path_factory) -> Path:
    """The 6 real CREMA-D clips under ``--preset remix``: 2 native 480x360 frames through a quality-95 JPEG."""
    ws = tmp_path_factory.mktemp("ref-inputs")
    return run_prepare(QUIET, ws, "cremad", root=shared_data / "crema_d", name="cremad-remix", preset="remix",
                       progress=False, workers=1)


@pytest.fixture(scope="module")
def folders(shared_data, tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("Image-01-FPS")
    return {n: ogm_ge_cremad_folder(shared_data / "crema_d" / "VideoFlash" / f"{n}.flv", root / n) for n in CREMAD}


# ----------------------------------------------------------------------------- frames and their choice


def test_remix_preset_frames_are_the_reference_folders_first_two_jpegs_exactly(remix_cache, folders):
    """The cache holds, byte for byte as pixels, the JPEGs the references read: the 1-fps folder's files at
    0 s and 1 s (frames 0 and 29 at 29.97 fps), encoded by OpenCV at quality 95 and decoded by PIL."""
    info = read_info(remix_cache)
    assert info.shapes["frames"] == (2, 360, 480, 3)
    with h5py.File(remix_cache) as f:
        for row, name in enumerate(info.names):
            files = folders[name]
            assert [p.name for p in files[:2]] == ["00000.jpg", "00029.jpg"]
            ref = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files[:2]])
            assert np.array_equal(f["frames"][row], ref), name


def test_frame_choice_of_each_reference_on_real_clips(shared_data):
    """ogm-ge (CREMA-D, T = 1): the folder's first file, frame 0. remix (T = 2): Remix's index rule over the
    folder's one-per-second frames. ogm-ge (Kinetics-style 10 s clips, T = 3): dataset/dataset.py's files
    1, 4, 7 of video2frame-1fps.py's folder, the frames at the centres of seconds 0, 3 and 6. uniform
    (mmvid, unchanged): the centres of 2 equal segments of the 1-fps frames (0.5 s and 2.47 s of a 3 s clip)."""
    for name in CREMAD[:3]:
        video = shared_data / "crema_d" / "VideoFlash" / f"{name}.flv"
        cap = cv2.VideoCapture(str(video))
        fps, n = int(cap.get(cv2.CAP_PROP_FPS)), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        folder = [c for c in range(n) if c % fps == 0]  # the counts video2frame_update writes
        _, one = decode_frames(video, 1, 1.0, 16, select="ogm-ge", anchor="start")
        assert one.indices.tolist() == [folder[0]] == [0]
        _, two = decode_frames(video, 2, 1.0, 16, select="remix", anchor="start")
        assert two.indices.tolist() == [folder[i] for i in remix_test_indices(len(folder))] == [0, 29]
        _, uni = decode_frames(video, 2, 1.0, 16)
        with av.open(str(video)) as c:  # the container's presentation times, which mmvid samples by
            times = np.array([f.time for f in c.decode(c.streams.video[0])])
        seconds = math.ceil(times[-1] + 1 / uni.fps - 1e-9)  # one candidate per second, shown at its centre
        ks = [int((i + 0.5) * seconds / 2) for i in range(2)]
        assert uni.indices.tolist() == [int(np.flatnonzero(times <= times[0] + k + 0.5 + 1e-9)[-1]) for k in ks]
    for clip in ("flipping_a_pancake.mkv", "chaplin.mp4"):  # 30 fps 10.4 s; 25 fps 9.6 s
        video = shared_data / "kinetics_sounds_style" / "videos" / clip
        _, info = decode_frames(video, 3, 1.0, 16, select="ogm-ge", anchor="centre")
        positions = ogm_ge_ks_positions(info.num_frames, info.fps)
        ref = [positions[t - 1] for t in ogm_ge_ks_files(len(positions))]
        # moviepy's reader counts frames from 1: round((i + 0.5) fps) is the frame at or one before that instant
        assert all(r - 1 <= i <= r for i, r in zip(info.indices.tolist(), ref)), (clip, info.indices, ref)
        assert (info.indices // info.fps).astype(int).tolist() == [0, 3, 6]


def test_frame_choice_rules_re_derived_for_every_folder_length():
    from mmvid.data.decode import pick_candidates

    for n in range(1, 40):
        for t in (1, 2, 3, 5):
            assert pick_candidates(n, t, "ogm-ge").tolist() == [min(x - 1, n - 1) for x in ogm_ge_ks_files(n, t)]
            assert pick_candidates(n, t, "remix").tolist() == remix_test_indices(n, t)
            assert pick_candidates(n, t, "uniform").tolist() == [min(int((i + 0.5) * n / t), n - 1) for i in range(t)]


# ----------------------------------------------------------------------------- crop and resize


@pytest.mark.parametrize("in_loader", [True, False])  # CPU training: crop in the loader; GPU: batched in finish_batch
def test_reference_crop_gives_the_references_draws_and_pixels(remix_cache, folders, in_loader):
    """Equal torch seeds: mmvid's per-frame boxes are the reference's draws exactly, and its frames equal
    CramedDataset's train transform of the reference's JPEGs within one grey level (the resamplers' rounding:
    PIL rounds to uint8, the batched path keeps floats: about 1/4 level on average; a crop one pixel off differs
    by tens of levels)."""
    info = read_info(remix_cache)
    rows = np.arange(len(info.names))
    ds = CacheDataset(remix_cache, rows, ["video"], train=True, crop_size=224, crop="reference",
                      crop_in_loader=in_loader)
    scales, flips = [], []
    for k, row in enumerate(rows):
        files = folders[info.names[row]][:2]
        torch.manual_seed(100 + k)
        item, _ = ds[k]
        torch.manual_seed(100 + k)
        draws = reference_draws([(360, 480)] * 2)
        torch.manual_seed(100 + k)
        ref = reference_frames(files, reference_train_transform())
        if not in_loader:
            assert item[BOX_KEY].tolist() == draws
        got = finish_batch({m: x[None] for m, x in item.items()})["video"][0]
        assert got.shape == ref.shape == (2, 3, 224, 224)
        diff = (got - ref).abs()
        assert diff.max() <= LEVEL + 1e-4 and diff.mean() < 0.35 * LEVEL, (k, float(diff.max()), float(diff.mean()))
        scales += [d[2] * d[3] / (360 * 480) for d in draws]
        flips += [d[4] for d in draws]
    assert min(scales) < 0.5 and 0 < sum(flips) < len(flips)  # the reference's range, flips drawn per frame


@pytest.mark.parametrize("in_loader", [True, False])
def test_test_time_resize_equals_pil_resize_within_one_level(remix_cache, folders, in_loader):
    """crop: reference (and clip, on a non-square cache) at test time: each whole frame resized to 224 x 224,
    as ``Resize((224, 224))`` on the PIL image (antialiased bilinear) does: torchvision's uint8 kernel (the CPU
    path) differs from PIL in a few pixels by one level; the batched float path by its rounding (~1/4 level)."""
    info = read_info(remix_cache)
    for crop in ("reference", "clip"):
        ds = CacheDataset(remix_cache, np.arange(3), ["video"], train=False, crop_size=224, crop=crop,
                          crop_in_loader=in_loader)
        for k in range(3):
            got = finish_batch({m: x[None] for m, x in ds[k][0].items()})["video"][0]
            ref = reference_frames(folders[info.names[k]][:2], reference_test_transform())
            diff = (got - ref).abs()
            bound = 0.01 if in_loader else 0.35
            assert diff.max() <= LEVEL + 1e-4 and diff.mean() < bound * LEVEL, (crop, k, float(diff.mean()))


def test_device_loader_draws_the_reference_crops_as_the_dataset_does(remix_cache):
    """--cache-on-gpu's loader draws each clip's per-frame boxes from torch's generator in the items' order.
    (A DataLoader first takes one number from that generator for its workers' seeds, so its draws start one
    later.)"""
    from torch.utils.data import default_collate

    from mmvid.data.device_loader import DeviceLoader

    rows = np.arange(6)
    make = lambda **kw: CacheDataset(remix_cache, rows, ["video"], train=True, crop_size=64, crop="reference", **kw)  # noqa: E731
    torch.manual_seed(7)
    ds = make()
    items = [ds[i][0] for i in range(len(rows))]
    a = torch.cat([finish_batch(default_collate(items[i:i + 4]))["video"] for i in (0, 4)])
    torch.manual_seed(7)
    b = torch.cat([finish_batch(x)["video"] for x, _ in DeviceLoader(make(in_memory=True), 4, torch.device("cpu"))])
    assert torch.allclose(a, b, atol=1e-5)


# ----------------------------------------------------------------------------- audio


def test_stft_padding_changes_only_the_edge_columns_and_the_resampler_changes_all(shared_data):
    """librosa >= 0.10 pads the centred STFT with zeros, older librosa by reflection: on CREMA-D's 257 x 188 only
    the first and last columns can differ. The resampler (soxr_hq vs kaiser_best) changes every column."""
    wav = shared_data / "crema_d" / "AudioWAV" / "1001_DFA_ANG_XX.wav"
    soxr, kaiser = decode_audio(wav, 22050), decode_audio(wav, 22050, "kaiser_best")
    for wave in (soxr, kaiser):
        zeros = log_spectrogram(wave, 22050, 3.0, 512, 353, pad_mode="constant")
        mirror = log_spectrogram(wave, 22050, 3.0, 512, 353, pad_mode="reflect")
        assert np.array_equal(zeros[:, 1:-1], mirror[:, 1:-1])
        assert not np.array_equal(zeros[:, -1], mirror[:, -1])
    a, b = (log_spectrogram(w, 22050, 3.0, 512, 353) for w in (soxr, kaiser))
    assert (np.abs(a - b).max(axis=0) > 1e-3).all()


def test_ogm_ge_preset_audio_is_cramed_datasets_lines_under_the_older_librosa(shared_data):
    """CramedDataset: librosa.load(sr=22050) (kaiser_best in librosa < 0.10), np.tile(x, 3)[:66150], clipped to
    [-1, 1], librosa.stft(n_fft=512, hop_length=353) (reflect padding in librosa < 0.10), log(|.| + 1e-7)."""
    import librosa

    from mmvid.data.features import audio_feature
    from mmvid.data.sources import preset_params

    p = PrepareParams.build({**preset_params("cremad", "ogm-ge"), "sample_rate": 22050, "clip_seconds": 3.0})
    wav = shared_data / "crema_d" / "AudioWAV" / "1001_DFA_SAD_XX.wav"
    samples, _ = librosa.load(str(wav), sr=22050, res_type="kaiser_best")
    x = np.clip(np.tile(samples, 3)[:22050 * 3], -1.0, 1.0)
    ref = np.log(np.abs(librosa.stft(x, n_fft=512, hop_length=353, pad_mode="reflect")) + 1e-7)
    assert np.array_equal(audio_feature(decode_audio(wav, p.sample_rate, p.resample), p), ref.astype(np.float32))


def test_kaldi_fbank_equals_its_formulas_on_a_real_clip(shared_data):
    wave = decode_audio(shared_data / "kinetics_sounds_style" / "videos" / "flipping_a_pancake.mkv", 16000)
    wave = wave - wave.mean()
    ours, ref = kaldi_fbank(wave, 16000, 128).numpy(), kaldi_fbank_f64(wave, 16000)
    assert ours.shape == ref.shape == (1 + (len(wave) - 400) // 160, 128)
    assert np.abs(ours - ref).max() < 2e-3  # float32 FFT vs float64, on log energies of -16 .. +10


def test_kaldi_fbank_equals_torchaudio_when_installed(shared_data):
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    wave = decode_audio(shared_data / "kinetics_sounds_style" / "videos" / "chaplin.mp4", 16000)
    wave = wave - wave.mean()
    ref = kaldi.fbank(torch.from_numpy(wave)[None], htk_compat=True, sample_frequency=16000, use_energy=False,
                      window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    assert torch.equal(kaldi_fbank(wave, 16000, 128), ref)


def test_kinetics_sounds_default_cache_is_ogm_ges_inputs(shared_data, tmp_path):
    """Kinetics-Sounds' default prepare: the 1024 x 128 normalised filterbank of process_audio.py (16 kHz audio;
    cut at 1024 rows for the 10.4 s clip, zero rows appended to the 9.6 s one) and 3 frames at 640 x 360."""
    root = tmp_path / "ks"
    for cls, clip in (("a", "flipping_a_pancake.mkv"), ("b", "chaplin.mp4")):
        (root / cls).mkdir(parents=True)
        (root / cls / clip).symlink_to(shared_data / "kinetics_sounds_style" / "videos" / clip)
    cache = run_prepare(QUIET, tmp_path / "ws", "kinetics-sounds", root=root, progress=False, workers=1)
    info = read_info(cache)
    assert info.shapes == {"frames": (3, 360, 640, 3), "spectrogram": (1024, 128)}
    with h5py.File(cache) as f:
        for row, name in enumerate(info.names):
            clip = next((root / name.split("/")[0]).iterdir())
            ref = process_audio_py(decode_audio(clip, 16000), 16000)
            got = f["spectrogram"][row].astype(np.float64)
            assert np.abs(got - ref).max() < 2e-3, name  # float16 storage: 2^-11 relative near |x| ~ 1
    short = process_audio_py(decode_audio(root / "b" / "chaplin.mp4", 16000), 16000)
    assert (short[1 + (int(9.6 * 16000) - 400) // 160 + 1:] == 4.503877 / (5.141276 * 2)).all()  # the padding
    p = PrepareParams.build({"audio_feature": "fbank"})
    assert np.allclose(silent_audio(p), (math.log(np.finfo(np.float32).eps) + 4.503877) / (5.141276 * 2))


# ----------------------------------------------------------------------------- recipes and caches


def test_a_recipe_refuses_a_cache_prepared_otherwise_in_one_line(remix_cache):
    from mmvid.engine.loaders import make_loader

    info = read_info(remix_cache)
    ok = resolve_config(None, {"data.prepared": {"frame_select": "remix", "frame_size": "short-side"}})
    make_loader(info, np.arange(2), ok, train=False)
    bad = resolve_config(None, {"data.prepared": {"frame_select": "ogm-ge", "num_frames": 1}})
    with pytest.raises(MmvidError) as e:
        make_loader(info, np.arange(2), bad, train=False)
    msg = str(e.value)
    assert "\n" not in msg and "frame_select='remix' (the recipe wants 'ogm-ge')" in msg and "--param num_frames=1" in msg
    with pytest.raises(MmvidError, match="unknown prepare parameter.*'frame_selct'"):
        resolve_config(None, {"data.prepared": {"frame_selct": "remix"}})
    with pytest.raises(MmvidError, match="data.prepared.frame_select='first'"):
        resolve_config(None, {"data.prepared": {"frame_select": "first"}})
    with pytest.raises(MmvidError, match="data.crop='per-frame'.*clip, reference"):
        resolve_config(None, {"data.crop": "per-frame"})


def test_jpeg_roundtrip_is_opencvs_file_read_by_pil(shared_data):
    from mmvid.data.prepare import jpeg_roundtrip

    frames, _ = decode_frames(shared_data / "kinetics_sounds_style" / "videos" / "chaplin.mp4", 2, 1.0, None)
    for q in (75, 95):
        ref = np.stack([np.asarray(Image.open(io.BytesIO(cv2.imencode(".jpg", f[..., ::-1].copy(),
                                                                       [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()))
                                   .convert("RGB")) for f in frames])
        assert np.array_equal(jpeg_roundtrip(frames, q), ref)
