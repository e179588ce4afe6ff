"""The log-Mel features, in numpy: the one definition that training and the device share.

``hrf_jax.audio.MelSettings`` holds the settings in training; an exported model's sidecar
holds the same fields (``mel``). The features are

    frames  = x[t*hop : t*hop + n_fft]              (no centering, T = 1 + (N - n_fft) // hop)
    spec    = |rfft(frames * hann(win_length) centred in n_fft)|^2
    logmel  = log(max(spec @ mel_matrix, log_floor))

with a periodic Hann window and librosa's default Slaney mel scale and area normalisation
(``htk=True``: the HTK scale), so ``librosa.feature.melspectrogram(..., center=False,
power=2.0)`` gives the same numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

# Slaney's scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above
_F_SP, _MIN_LOG_HZ = 200.0 / 3, 1000.0
_MIN_LOG_MEL, _LOGSTEP = _MIN_LOG_HZ / _F_SP, np.log(6.4) / 27.0


def hz_to_mel(hz: Any, htk: bool = False) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    safe = np.maximum(hz, _MIN_LOG_HZ)
    return np.where(hz >= _MIN_LOG_HZ, _MIN_LOG_MEL + np.log(safe / _MIN_LOG_HZ) / _LOGSTEP,
                    hz / _F_SP)


def mel_to_hz(mel: Any, htk: bool = False) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    return np.where(mel >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL)),
                    mel * _F_SP)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, num_mels: int, fmin: float = 0.0,
                   fmax: float | None = None, htk: bool = False) -> np.ndarray:
    """Triangular mel filters, Slaney area normalisation: ``(n_fft // 2 + 1, num_mels)``
    float64, read-only (cached)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), num_mels + 2),
                      htk)
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    weights = np.maximum(0.0, np.minimum(-ramps[:-2] / widths[:-1, None],
                                         ramps[2:] / widths[1:, None]))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per filter
    weights = np.ascontiguousarray(weights.T)
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=16)
def analysis_window(win_length: int, n_fft: int) -> np.ndarray:
    """Periodic Hann window of ``win_length`` centred in ``n_fft`` zeros: ``(n_fft,)``."""
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_length) / win_length)
    left = (n_fft - win_length) // 2
    window = np.zeros(n_fft)
    window[left:left + win_length] = hann
    window.setflags(write=False)
    return window


def filterbank_of(settings: Mapping[str, Any]) -> np.ndarray:
    """``mel_filterbank`` of a settings mapping (``MelSettings`` fields or a sidecar's ``mel``)."""
    return mel_filterbank(int(settings["sample_rate"]), int(settings["n_fft"]),
                          int(settings["num_mels"]), float(settings["fmin"]),
                          settings.get("fmax"), bool(settings["htk"]))


def logmel(wave: np.ndarray, settings: Mapping[str, Any]) -> np.ndarray:
    """``(N,)`` waveform -> ``(T, num_mels)`` float32 log-Mel (float64 inside);
    short input is zero-padded to one frame."""
    n_fft, hop = int(settings["n_fft"]), int(settings["hop_length"])
    x = np.asarray(wave, dtype=np.float64)
    if x.shape[0] < n_fft:
        x = np.pad(x, (0, n_fft - x.shape[0]))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    window = analysis_window(int(settings["win_length"]), n_fft)
    spec = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    mel = spec @ filterbank_of(settings)
    return np.log(np.maximum(mel, settings["log_floor"])).astype(np.float32)


def normalize(feats: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    """Training-time normalisation of ``(T, F)`` log-Mel from a sidecar: corpus mean/std,
    per utterance, or none."""
    feats = np.asarray(feats, np.float32)
    if meta.get("mean") is not None:
        return (feats - np.asarray(meta["mean"], np.float32)) / np.asarray(meta["std"],
                                                                             np.float32)
    if meta.get("normalize") == "utterance":
        std = np.maximum(feats.std(axis=0, keepdims=True), 1e-5)
        return (feats - feats.mean(axis=0, keepdims=True)) / std
    return feats
