"""Audio features: the log-magnitude STFT spectrogram of the reference implementations, and the Kaldi
log-mel filterbank of OGM-GE's Kinetics-Sounds preprocessing (``audio_feature: fbank``)."""

from __future__ import annotations

from typing import Any

import numpy as np

# OGM-GE's KineticSound/process_audio.py: the filterbank is normalised as (x - mean) / (2 * std) with these
# (AudioSet's statistics, as the AST recipe it follows uses them).
FBANK_MEAN = -4.503877
FBANK_STD = 5.141276


def log_spectrogram(wave: np.ndarray, sr: int, clip_seconds: float, n_fft: int, hop: int,
                    window: str = "hann", tile: bool = True, pad_mode: str = "constant") -> np.ndarray:
    """(F, T') float32 = log(|STFT(wave)| + 1e-7), F = n_fft // 2 + 1.

    The waveform is tiled (``tile``) or zero-padded to ``clip_seconds`` and cut there, as the
    OGM-GE CREMA-D loader does (3 s at 22,050 Hz, n_fft 512, hop 353 -> 257 x 188). The centred STFT
    pads n_fft // 2 samples at each end with ``pad_mode``: ``constant`` (zeros) is librosa >= 0.10's
    default, ``reflect`` that of the older librosa the 2022 reference code ran; only the frames whose
    window reaches past an end (the first and last columns here) differ (docs/methods.md).
    """
    import librosa  # seconds to import (numba): loaded where a spectrogram is computed, not with this module

    target = int(round(sr * clip_seconds))
    if wave.size == 0:
        raise ValueError("empty waveform")
    if wave.size < target:
        if tile:
            wave = np.tile(wave, int(np.ceil(target / wave.size)))
        else:
            wave = np.pad(wave, (0, target - wave.size))
    wave = wave[:target]
    spec = librosa.stft(wave, n_fft=n_fft, hop_length=hop, window=window, pad_mode=pad_mode)
    return np.log(np.abs(spec) + 1e-7).astype(np.float32)


def spectrogram_shape(sr: int, clip_seconds: float, n_fft: int, hop: int) -> tuple[int, int]:
    target = int(round(sr * clip_seconds))
    return n_fft // 2 + 1, 1 + target // hop


def _mel(f):
    return 1127.0 * np.log(1.0 + f / 700.0) if isinstance(f, float) else 1127.0 * (1.0 + f / 700.0).log()


def mel_banks(n_mels: int, n_fft: int, sr: float, low: float = 20.0, high: float = 0.0):
    """(n_mels, n_fft // 2 + 1) float32 triangular filters, equally spaced on Kaldi's mel scale
    m(f) = 1127 ln(1 + f / 700) between ``low`` and ``high`` (<= 0: Nyquist + high); the last (Nyquist)
    FFT bin gets weight 0, as in Kaldi. Computed in float32 as torchaudio's ``get_mel_banks`` does."""
    import torch  # a second to import: only the Kaldi filterbank needs it, not a decoder computing STFTs

    nyquist = 0.5 * sr
    high = high + nyquist if high <= 0.0 else high
    lo_mel, hi_mel = _mel(float(low)), _mel(float(high))
    delta = (hi_mel - lo_mel) / (n_mels + 1)
    b = torch.arange(n_mels).unsqueeze(1)
    left, centre, right = lo_mel + b * delta, lo_mel + (b + 1.0) * delta, lo_mel + (b + 2.0) * delta
    mel = _mel((sr / n_fft) * torch.arange(n_fft / 2)).unsqueeze(0)  # (1, n_fft / 2) float32
    up, down = (mel - left) / (centre - left), (right - mel) / (right - centre)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))


def kaldi_fbank(wave: np.ndarray, sr: int, n_mels: int = 128, frame_shift_ms: float = 10.0,
                frame_length_ms: float = 25.0, preemphasis: float = 0.97, low_freq: float = 20.0):
    """(m, n_mels) float32 torch tensor: Kaldi's log-mel filterbank as ``torchaudio.compliance.kaldi.fbank``
    computes it with OGM-GE's arguments (``htk_compat=True, use_energy=False, window_type='hanning',
    dither=0.0, frame_shift=10``) and its other defaults: frames of 25 ms every 10 ms that fit in the
    signal (snip_edges), m = 1 + (n - L) // S; each frame's mean removed, pre-emphasis x[j] - 0.97 x[j-1]
    (x[-1] = x[0]), a symmetric Hann window, zero-padded to the next power of two N; power spectrum
    |rfft|^2; mel filters (``mel_banks``); log(max(E, eps_float32)). ``wave``: (n,) samples.
    """
    import torch  # a second to import: only the Kaldi filterbank needs it, not a decoder computing STFTs

    x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    shift, length = int(sr * frame_shift_ms * 0.001), int(sr * frame_length_ms * 0.001)
    if x.numel() < length:
        raise ValueError(f"waveform of {x.numel()} samples is shorter than one {frame_length_ms:g} ms frame")
    n_fft = 1 << (length - 1).bit_length()
    frames = x.unfold(0, length, shift)  # (m, L), as torchaudio's strided view
    frames = frames - frames.mean(dim=1, keepdim=True)
    prev = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - preemphasis * prev
    frames = frames * torch.hann_window(length, periodic=False)
    frames = torch.nn.functional.pad(frames, (0, n_fft - length))
    power = torch.fft.rfft(frames).abs().pow(2.0)
    energies = torch.mm(power, mel_banks(n_mels, n_fft, float(sr), low_freq).T)
    return torch.clamp(energies, min=torch.finfo(torch.float32).eps).log()


def fbank_feature(wave: np.ndarray, sr: int, n_mels: int = 128, frames: int = 1024) -> np.ndarray:
    """(frames, n_mels) float32: OGM-GE's Kinetics-Sounds audio input (KineticSound/process_audio.py):
    the waveform less its mean, ``kaldi_fbank``, zero rows appended or rows cut to ``frames`` (1024 = 10.24 s),
    then (x - FBANK_MEAN) / (2 FBANK_STD). Time runs along the first axis, as in the reference's arrays."""
    import torch  # a second to import: only the Kaldi filterbank needs it, not a decoder computing STFTs

    wave = np.asarray(wave, dtype=np.float32)
    if wave.size == 0:
        raise ValueError("empty waveform")
    fb = kaldi_fbank(wave - wave.mean(), sr, n_mels)
    if fb.shape[0] < frames:
        fb = torch.nn.functional.pad(fb, (0, 0, 0, frames - fb.shape[0]))
    fb = fb[:frames]
    return ((fb - FBANK_MEAN) / (FBANK_STD * 2)).numpy().astype(np.float32)


def audio_shape(params: dict[str, Any]) -> tuple[int, int]:
    """The stored audio array of one clip for these prepare parameters (a cache's attributes; a cache
    written before ``audio_feature`` existed holds the STFT)."""
    if params.get("audio_feature", "stft") == "fbank":
        return int(params.get("fbank_frames", 1024)), int(params.get("n_mels", 128))
    return spectrogram_shape(int(params["sample_rate"]), float(params["clip_seconds"]), int(params["n_fft"]),
                             int(params["hop"]))


def audio_feature(wave: np.ndarray, p) -> np.ndarray:
    """The cache's audio array of one clip from its mono waveform at ``p.sample_rate`` (``p``: PrepareParams)."""
    if p.audio_feature == "fbank":
        return fbank_feature(wave, p.sample_rate, p.n_mels, p.fbank_frames)
    return log_spectrogram(wave, p.sample_rate, p.clip_seconds, p.n_fft, p.hop, p.window, p.tile_audio, p.stft_pad)


def silent_audio(p) -> np.ndarray:
    """The audio array of a clip without audio (``missing_audio: zeros``): the feature of silence."""
    if p.audio_feature == "fbank":
        n = int(p.sample_rate * 0.010) * (p.fbank_frames - 1) + int(p.sample_rate * 0.025)  # fbank_frames frames
        return fbank_feature(np.zeros(n, np.float32), p.sample_rate, p.n_mels, p.fbank_frames)
    return np.full(spectrogram_shape(p.sample_rate, p.clip_seconds, p.n_fft, p.hop), np.log(1e-7), dtype=np.float32)
