"""The synthetic corpus's signal processing (numpy only): zero-phase FFT filtering, the
formant resonators of the vowels, fades, and the headroom preset's recording channel.
Used by ``hrf_jax.data.synthetic``, which decides what is said and how."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hrf_jax.audio import SAMPLE_RATE

# Formant bandwidths (Hz) of the vowels' four resonators.
BANDWIDTHS = np.array([80.0, 100.0, 140.0, 200.0])


def fft_filter(signal: np.ndarray, gain_fn: Callable[[np.ndarray], np.ndarray], tail: int
               ) -> np.ndarray:
    """Filter `signal` (N,) by a zero-phase magnitude response gain_fn(freqs) -> (N + tail,)."""
    n = signal.shape[0] + tail
    nfft = 1 << int(np.ceil(np.log2(max(n, 2))))
    freqs = np.fft.rfftfreq(nfft, 1.0 / SAMPLE_RATE)
    out = np.fft.irfft(np.fft.rfft(signal, nfft) * gain_fn(freqs), nfft)
    return out[:n]


def formant_gain(freqs: np.ndarray, formants: np.ndarray) -> np.ndarray:
    """Magnitude response of the vowel's formants at ``freqs``."""
    # Cascade of second-order resonators: unity at DC, peak ~F/B at each formant.
    gain = np.ones_like(freqs)
    for f, b in zip(formants, BANDWIDTHS, strict=True):
        gain /= np.sqrt((1.0 - (freqs / f) ** 2) ** 2 + (freqs * b / f**2) ** 2)
    return gain


def fade(n: int, ramp: int) -> np.ndarray:
    """(n,) envelope with raised-cosine ramps of ``ramp`` samples at both ends."""
    ramp = min(ramp, n // 2)
    env = np.ones(n)
    if ramp > 0:
        r = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        env[:ramp], env[n - ramp:] = r, r[::-1]
    return env


def channel(rng: np.random.Generator, wave: np.ndarray) -> np.ndarray:
    """Headroom: a random recording channel (telephone band or random low/high cuts, an
    equalisation slope) and coloured noise (spectral slope 0-2, 1/f^a) at 15-40 dB SNR."""
    if rng.random() < 0.2:
        low, high = 300.0, 3400.0
    else:
        low, high = rng.uniform(40.0, 200.0), rng.uniform(4000.0, 7800.0)
    slope = rng.uniform(-3.0, 3.0)  # dB per octave around 1 kHz

    def response(f):
        f = np.maximum(f, 1.0)
        edges = 1.0 / np.sqrt((1.0 + (low / f) ** 4) * (1.0 + (f / high) ** 8))
        return edges * (f / 1000.0) ** (slope / 6.02)

    out = fft_filter(wave, response, 0)
    colour = rng.uniform(0.0, 2.0)
    noise = fft_filter(rng.standard_normal(wave.size),
                        lambda f: np.maximum(f, 20.0) ** (-colour / 2.0), 0)
    snr_db = rng.uniform(15.0, 40.0)
    noise *= np.sqrt(np.mean(out**2) / (np.mean(noise**2) + 1e-12)) * 10.0 ** (-snr_db / 20.0)
    return out + noise
