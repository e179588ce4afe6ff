"""Reading audio as 16 kHz-style mono float32 (libsndfile for decoding, soxr for resampling)."""

from __future__ import annotations

import pathlib

import numpy as np


def read_audio(path: str | pathlib.Path, sample_rate: int = 16_000) -> np.ndarray:
    """Any file libsndfile reads -> ``(N,)`` float32 mono at ``sample_rate`` (soxr HQ)."""
    import soundfile as sf

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise ValueError(f"no samples in {path}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"NaN or inf samples in {path}")
    return to_rate(data, sr, sample_rate)


def to_rate(data: np.ndarray, sr: int, sample_rate: int = 16_000) -> np.ndarray:
    """``(N,)`` or ``(N, C)`` audio at ``sr`` -> ``(M,)`` float32 mono at ``sample_rate``."""
    data = np.asarray(data, dtype=np.float32)
    mono = data.mean(axis=1) if data.ndim == 2 else data
    if sr != sample_rate:
        import soxr

        mono = soxr.resample(mono, sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)
