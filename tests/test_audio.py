"""The log-Mel front-end: librosa parity, numpy == jax.numpy, audio loading and normalisation."""

import jax
import librosa
import numpy as np
import pytest
import soundfile as sf

from hrf_jax.audio import (
    AudioError,
    MelSettings,
    corpus_stats,
    load_audio,
    logmel_jnp,
    logmel_np,
    mel_filterbank,
    utterance_normalize,
)


def _chirp(seconds: float = 1.3, sr: int = 16_000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(0)
    return (0.3 * np.sin(2 * np.pi * (150 * t + 900 * t**2)) + 0.05 * rng.standard_normal(t.size))


@pytest.mark.parametrize("settings", [MelSettings(), MelSettings(num_mels=40, htk=True)])
def test_logmel_matches_librosa(settings):
    wave = _chirp()
    ref = librosa.feature.melspectrogram(
        y=wave, sr=settings.sample_rate, n_fft=settings.n_fft, hop_length=settings.hop_length,
        win_length=settings.win_length, window="hann", center=False, power=2.0,
        n_mels=settings.num_mels, htk=settings.htk)
    ref = np.log(np.maximum(ref, settings.log_floor)).T
    ours = logmel_np(wave, settings)
    assert ours.shape == ref.shape == (settings.num_frames(wave.size), settings.num_mels)
    assert np.max(np.abs(ours - ref)) <= 1e-3


def test_filterbank_matches_librosa():
    ref = librosa.filters.mel(sr=16_000, n_fft=512, n_mels=128).T
    np.testing.assert_allclose(mel_filterbank(MelSettings()), ref, atol=1e-7)
    assert np.all(mel_filterbank(MelSettings()).sum(axis=0) > 0)  # no empty filter


def test_jnp_frontend_matches_numpy_under_jit():
    wave = _chirp().astype(np.float32)
    ours = logmel_np(wave)
    fn = jax.jit(logmel_jnp)
    np.testing.assert_array_less(np.abs(np.asarray(fn(wave)) - ours), 1e-4)
    batched = np.asarray(fn(np.stack([wave, wave[::-1].copy()])))
    assert batched.shape == (2,) + ours.shape
    np.testing.assert_array_less(np.abs(batched[1] - logmel_np(wave[::-1])), 1e-4)


def test_short_input_gives_one_frame():
    assert logmel_np(np.zeros(100)).shape == (1, 128)
    assert logmel_jnp(np.zeros(100, np.float32)).shape == (1, 128)


def test_load_audio_mixes_to_mono_and_resamples(tmp_path):
    t = np.arange(44_100) / 44_100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], axis=1) * 0.5
    sf.write(tmp_path / "a.flac", stereo, 44_100)
    wave = load_audio(tmp_path / "a.flac")
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.size - 16_000) <= 1
    assert np.isclose(np.abs(wave[1000:-1000]).max(), 0.25, atol=0.01)  # mean of the channels


@pytest.mark.parametrize("writer,reason", [
    (lambda p: p.write_bytes(b"not audio at all"), "unreadable_audio"),
    (lambda p: sf.write(p, np.zeros(0), 16_000), "empty_audio"),
    (lambda p: sf.write(p, np.array([0.1, np.nan, 0.2] * 100), 16_000, subtype="FLOAT"),
     "nonfinite_audio"),
    (lambda p: None, "missing_audio"),
])
def test_bad_audio_raises_with_reason(tmp_path, writer, reason):
    path = tmp_path / "x.wav"
    writer(path)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert err.value.reason == reason


def test_utterance_normalize_zero_mean_unit_std():
    x = np.random.default_rng(0).normal(3.0, 2.0, (50, 8))
    y = utterance_normalize(x)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-4)


def test_corpus_stats_pool_utterances():
    rng = np.random.default_rng(1)
    utts = [rng.normal(1.0, 3.0, (n, 4)) for n in (10, 30, 7)]
    sums, sumsq = np.stack([u.sum(0) for u in utts]), np.stack([(u**2).sum(0) for u in utts])
    stats = corpus_stats(sums, sumsq, np.array([len(u) for u in utts]))
    allx = np.concatenate(utts)
    np.testing.assert_allclose(stats.mean, allx.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats.std, allx.std(0), rtol=1e-5)
