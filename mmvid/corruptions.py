"""Test-time corruptions of one batch, on the tensors the model reads (see :mod:`mmvid.data.torch_dataset`).

Shapes (B batch, T frames): audio (B, 1, F, L) = log(|STFT| + 1e-7); video (B, T, 3, H, W)
ImageNet-normalised RGB; flow (B, T, 2, H, W) in pixels per frame. Every function returns a new
tensor (the caller's batch is never changed) and draws its randomness from the given CPU
``torch.Generator``, so that every run compared meets exactly the same corrupted test set.

Severity units:

* audio Gaussian noise: SNR in dB, applied on the **linear magnitude** (see :func:`audio_noise_snr`);
* video Gaussian noise: sigma on the [0, 1] pixel scale, before ImageNet normalisation;
* flow Gaussian noise: sigma in pixels per frame;
* blur: Gaussian sigma as a fraction of the frame side; occlusion: fraction of the frame area;
  audio dropout: fraction of the spectrogram's time steps silenced.
"""

from __future__ import annotations

import math

import torch

from mmvid.data.torch_dataset import IMAGENET_MEAN, IMAGENET_STD

LOG_EPS = 1e-7  # the floor of the cache's log spectrogram, log(|S| + 1e-7)
SILENCE = math.log(LOG_EPS)


def _randn(shape: torch.Size, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=gen).to(like.device, like.dtype)


def _rand(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen)


def audio_noise_snr(x: torch.Tensor, snr_db: float, gen: torch.Generator) -> torch.Tensor:
    """Additive white noise at ``snr_db`` on a log spectrogram (B, 1, F, L).

    White noise added to the waveform adds, in every STFT bin, a circular complex Gaussian N of
    equal variance. So with M = exp(x) - 1e-7 the clean magnitude and P_s = mean(M^2) over the
    clip's bins, P_n = P_s / 10^(snr/10), the noisy magnitude is |M + N|, N ~ CN(0, P_n)
    (the unknown clean phase does not matter: N is circularly symmetric), and the result is
    stored back as log(|M + N| + 1e-7). SNR is per clip.
    """
    mag = (x.float().exp() - LOG_EPS).clamp_min(0.0)
    p_signal = mag.pow(2).mean(dim=(1, 2, 3), keepdim=True)
    std = (p_signal / 10.0 ** (snr_db / 10.0) / 2.0).sqrt()  # per real/imaginary component
    re = mag + std * _randn(mag.shape, gen, mag)
    im = std * _randn(mag.shape, gen, mag)
    return torch.log(torch.sqrt(re * re + im * im) + LOG_EPS).to(x.dtype)


def video_noise(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise of ``sigma`` on the [0, 1] pixel scale, clipped there (B, T, 3, H, W)."""
    mean, std = IMAGENET_MEAN.to(x.device, x.dtype), IMAGENET_STD.to(x.device, x.dtype)
    pixels = x * std + mean
    noisy = (pixels + sigma * _randn(x.shape, gen, x)).clamp(0.0, 1.0)
    return (noisy - mean) / std


def flow_noise(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise of ``sigma`` pixels/frame on both flow components (B, T, 2, H, W)."""
    return x + sigma * _randn(x.shape, gen, x)


def blur(x: torch.Tensor, fraction: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian blur of every frame, sigma = ``fraction`` x frame side (B, T, C, H, W).

    Blur is linear and the ImageNet normalisation is a per-channel affine map, so blurring the
    normalised tensor equals normalising the blurred frames.
    """
    import torchvision.transforms.v2.functional as TF

    side = x.shape[-1]
    sigma = max(fraction * side, 1e-3)
    k = min(2 * math.ceil(3 * sigma) + 1, 2 * ((side - 1) // 2) + 1)  # odd, and reflect padding must fit
    out = TF.gaussian_blur(x.flatten(0, 1), [k, k], [sigma, sigma])
    return out.view_as(x)


def occlude(x: torch.Tensor, area: float, gen: torch.Generator) -> torch.Tensor:
    """One square patch covering ``area`` of the frame, at a random place per clip and the same in
    all its frames, set to 0 (= the ImageNet mean colour for RGB, no motion for flow)."""
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    ph, pw = max(1, round(math.sqrt(area) * h)), max(1, round(math.sqrt(area) * w))
    top = (_rand(b, gen) * (h - ph + 1)).long().clamp_max(h - ph)
    left = (_rand(b, gen) * (w - pw + 1)).long().clamp_max(w - pw)
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + ph)  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + pw)  # (B, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :]).to(x.device)  # (B, H, W)
    return x.masked_fill(mask.view(b, *([1] * (x.dim() - 3)), h, w), 0.0)


def audio_dropout(x: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Silence one contiguous block of ``fraction`` of the time steps per clip (B, 1, F, L); silence is
    the spectrogram's floor log(1e-7), what the cache stores for a clip without sound."""
    b, steps = x.shape[0], x.shape[-1]
    n = min(steps, max(1, round(fraction * steps)))
    start = (_rand(b, gen) * (steps - n + 1)).long().clamp_max(steps - n)
    t = torch.arange(steps)[None, :]
    mask = ((t >= start[:, None]) & (t < start[:, None] + n)).to(x.device)  # (B, L)
    return x.masked_fill(mask[:, None, None, :], SILENCE)


def gaussian_noise(modality: str, x: torch.Tensor, level: float, gen: torch.Generator) -> torch.Tensor:
    """Dispatch by modality: SNR in dB for audio, sigma for video and flow."""
    return {"audio": audio_noise_snr, "video": video_noise, "flow": flow_noise}[modality](x, level, gen)
