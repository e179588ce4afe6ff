"""Audio I/O and the log-Mel front-end: one definition, two implementations.

The features are defined once, in numpy, in ``hrf_jax_runtime.features`` (the device runtime
computes them with the same code): ``logmel_np`` is that definition driven by `MelSettings`,
used for data preparation; ``logmel_jnp`` is the in-graph (jax.numpy) twin that can be jitted
and exported, built from the same filterbank and window (tests compare the two).
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax.numpy as jnp
import numpy as np
import soundfile as sf

from hrf_jax_runtime import features
from hrf_jax_runtime.audio import to_rate

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
    return to_rate(data, sr, sample_rate)


def mel_filterbank(settings: MelSettings = MelSettings()) -> np.ndarray:
    """Triangular mel filters with Slaney area normalisation: (n_fft // 2 + 1, num_mels) float64."""
    return features.filterbank_of(dataclasses.asdict(settings))


def analysis_window(settings: MelSettings = MelSettings()) -> np.ndarray:
    """Periodic Hann window of `win_length`, zero-padded to the centre of `n_fft`: (n_fft,)."""
    return features.analysis_window(settings.win_length, settings.n_fft)


def logmel_np(wave: np.ndarray, settings: MelSettings = MelSettings()) -> np.ndarray:
    """(N,) waveform -> (T, num_mels) float32 log-Mel, T = settings.num_frames(N)."""
    return features.logmel(wave, dataclasses.asdict(settings))


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
