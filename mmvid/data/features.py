"""Audio features: the log-magnitude STFT spectrogram of the reference implementations."""

from __future__ import annotations

import numpy as np


def log_spectrogram(wave: np.ndarray, sr: int, clip_seconds: float, n_fft: int, hop: int,
                    window: str = "hann", tile: bool = True) -> np.ndarray:
    """(F, T') float32 = log(|STFT(wave)| + 1e-7), F = n_fft // 2 + 1.

    The waveform is tiled (``tile``) or zero-padded to ``clip_seconds`` and cut there, as the
    OGM-GE CREMA-D loader does (3 s at 22,050 Hz, n_fft 512, hop 353 -> 257 x 188).
    """
    import librosa

    target = int(round(sr * clip_seconds))
    if wave.size == 0:
        raise ValueError("empty waveform")
    if wave.size < target:
        if tile:
            wave = np.tile(wave, int(np.ceil(target / wave.size)))
        else:
            wave = np.pad(wave, (0, target - wave.size))
    wave = wave[:target]
    spec = librosa.stft(wave, n_fft=n_fft, hop_length=hop, window=window)
    return np.log(np.abs(spec) + 1e-7).astype(np.float32)


def spectrogram_shape(sr: int, clip_seconds: float, n_fft: int, hop: int) -> tuple[int, int]:
    target = int(round(sr * clip_seconds))
    return n_fft // 2 + 1, 1 + target // hop
