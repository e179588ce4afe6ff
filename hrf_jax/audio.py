"""Audio I/O and the log-Mel front-end: one definition, two implementations.

`MelSettings` + `mel_filterbank` define the features once. `logmel_np` (numpy, float64
inside) is used for data preparation; `logmel_jnp` (jax.numpy, no Python loop over
frames) is the in-graph front-end that can be jitted and exported. Both compute

    frames  = x[t*hop : t*hop + n_fft]              (no centering, T = 1 + (N - n_fft) // hop)
    spec    = |rfft(frames * hann(win_length) centered in n_fft)|^2
    logmel  = log(max(spec @ mel_matrix, log_floor))

with a periodic Hann window and librosa's default Slaney mel scale and Slaney area
normalisation (``htk=True`` switches to the HTK scale), so
``librosa.feature.melspectrogram(..., center=False, power=2.0)`` gives the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax.numpy as jnp
import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000


class AudioError(ValueError):
    """An audio file that cannot be used; `reason` is a short key for skip reports."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class MelSettings:
    """Log-Mel settings. Defaults: 25 ms Hann window, 10 ms hop, 512-point FFT, 128 bins."""

    sample_rate: int = SAMPLE_RATE
    win_length: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms at 16 kHz -> 100 frames per second
    n_fft: int = 512  # >= win_length; 31.25 Hz bins keep every one of 128 mel filters non-empty
    num_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None  # None: sample_rate / 2
    htk: bool = False  # False: Slaney mel scale (librosa's default)
    log_floor: float = 1e-6  # floor on mel power before the log; keeps silence finite

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for `num_samples` samples (short input is zero-padded to one frame)."""
        return 1 + max(num_samples - self.n_fft, 0) // self.hop_length


def load_audio(path: str | pathlib.Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read wav/flac/ogg, mix to mono, resample to `sample_rate`: (N,) float32.

    Raises AudioError(reason=...) for unreadable, empty or non-finite audio.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise AudioError("missing_audio", f"audio file not found: {path}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types for bad/truncated files
        raise AudioError("unreadable_audio", f"cannot decode {path}: {exc}") from exc
    if data.shape[0] == 0:
        raise AudioError("empty_audio", f"no samples in {path}")
    if not np.all(np.isfinite(data)):
        raise AudioError("nonfinite_audio", f"NaN or inf samples in {path}")
    return to_mono_16k(data, sr, sample_rate)


def to_mono_16k(data: np.ndarray, sr: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(N,) or (N, C) audio at `sr` -> (M,) float32 mono at `sample_rate`."""
    data = np.asarray(data, dtype=np.float32)
    mono = data.mean(axis=1) if data.ndim == 2 else data
    if sr != sample_rate:
        mono = soxr.resample(mono, sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _hz_to_mel(hz: np.ndarray, htk: bool) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    # Slaney: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    safe = np.maximum(hz, min_log_hz)
    return np.where(hz >= min_log_hz, min_log_mel + np.log(safe / min_log_hz) / logstep, hz / f_sp)


def _mel_to_hz(mel: np.ndarray, htk: bool) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)),
                    mel * f_sp)


@functools.lru_cache(maxsize=16)
def mel_filterbank(settings: MelSettings = MelSettings()) -> np.ndarray:
    """Triangular mel filters with Slaney area normalisation: (n_fft // 2 + 1, num_mels) float64."""
    fmax = settings.sample_rate / 2 if settings.fmax is None else settings.fmax
    fft_freqs = np.linspace(0.0, settings.sample_rate / 2, settings.n_fft // 2 + 1)
    mels = np.linspace(_hz_to_mel(settings.fmin, settings.htk), _hz_to_mel(fmax, settings.htk),
                       settings.num_mels + 2)
    edges = _mel_to_hz(mels, settings.htk)
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per filter ("slaney" norm)
    weights.setflags(write=False)
    return np.ascontiguousarray(weights.T)


@functools.lru_cache(maxsize=16)
def analysis_window(settings: MelSettings = MelSettings()) -> np.ndarray:
    """Periodic Hann window of `win_length`, zero-padded to the centre of `n_fft`: (n_fft,)."""
    n = settings.win_length
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    left = (settings.n_fft - n) // 2
    window = np.zeros(settings.n_fft)
    window[left:left + n] = hann
    window.setflags(write=False)
    return window


def logmel_np(wave: np.ndarray, settings: MelSettings = MelSettings()) -> np.ndarray:
    """(N,) waveform -> (T, num_mels) float32 log-Mel, T = settings.num_frames(N)."""
    x = np.asarray(wave, dtype=np.float64)
    if x.shape[0] < settings.n_fft:
        x = np.pad(x, (0, settings.n_fft - x.shape[0]))
    frames = np.lib.stride_tricks.sliding_window_view(x, settings.n_fft)[::settings.hop_length]
    spec = np.abs(np.fft.rfft(frames * analysis_window(settings), axis=-1)) ** 2
    mel = spec @ mel_filterbank(settings)
    return np.log(np.maximum(mel, settings.log_floor)).astype(np.float32)


def logmel_jnp(wave: jnp.ndarray, settings: MelSettings = MelSettings()) -> jnp.ndarray:
    """(..., N) waveform -> (..., T, num_mels) float32 log-Mel; jit/export friendly (N static)."""
    x = jnp.asarray(wave, dtype=jnp.float32)
    n = x.shape[-1]
    if n < settings.n_fft:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, settings.n_fft - n)])
    num_frames = settings.num_frames(n)
    # One gather with a static (T, n_fft) index grid frames the signal without a frame loop.
    idx = (np.arange(num_frames)[:, None] * settings.hop_length
           + np.arange(settings.n_fft)[None, :])
    frames = x[..., idx] * jnp.asarray(analysis_window(settings), dtype=jnp.float32)
    c = jnp.fft.rfft(frames, axis=-1)
    # re^2 + im^2, not abs(c)**2: the same power without a sqrt, and jax2onnx 0.17 converts
    # abs of a complex rfft to a (..., 2) re/im pair (no magnitude); real/imag convert
    spec = jnp.real(c) ** 2 + jnp.imag(c) ** 2
    mel = jnp.matmul(spec, jnp.asarray(mel_filterbank(settings), dtype=jnp.float32),
                     precision="highest")
    return jnp.log(jnp.maximum(mel, settings.log_floor))


def utterance_normalize(feats: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Per-utterance mean/variance normalisation over time: (T, F) -> (T, F) float32."""
    feats = np.asarray(feats, dtype=np.float32)
    mean = feats.mean(axis=0, keepdims=True)
    std = feats.std(axis=0, keepdims=True)
    return (feats - mean) / np.maximum(std, eps)


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    """Corpus-level per-bin mean and standard deviation: each (F,) float32."""

    mean: np.ndarray
    std: np.ndarray

    def apply(self, feats: np.ndarray) -> np.ndarray:
        """(T, F) -> (T, F) float32 standardised with these statistics."""
        return ((np.asarray(feats, np.float32) - self.mean) / self.std).astype(np.float32)


def corpus_stats(sums: np.ndarray, sumsq: np.ndarray, counts: np.ndarray,
                 eps: float = 1e-5) -> FeatureStats:
    """Pool per-utterance sums (U, F), sums of squares (U, F) and frame counts (U,) of the
    training utterances into corpus statistics (never pass validation/test rows)."""
    total = float(np.sum(counts))
    if total <= 0:
        raise ValueError("corpus statistics need at least one training frame")
    mean = np.sum(sums, axis=0) / total
    var = np.maximum(np.sum(sumsq, axis=0) / total - mean**2, 0.0)
    return FeatureStats(mean.astype(np.float32), np.maximum(np.sqrt(var), eps).astype(np.float32))
