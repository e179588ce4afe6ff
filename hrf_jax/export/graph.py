"""The exported function ``(signal, length) -> logits`` and the shape of its signal input."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hrf_jax.audio import MelSettings, logmel_jnp
from hrf_jax.conv_ops import convolution_ops


def mel_settings(info: dict[str, Any]) -> MelSettings:
    """The front-end settings of a run (``features_for`` uses the same)."""
    return MelSettings(num_mels=int(info["feature_dim"]))


def graph_fn(model: Any, variables: dict[str, Any], info: dict[str, Any], frontend: bool
             ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(signal (1, T, F) or (1, N), length (1,)) -> logits (1, C)``: what gets exported."""
    settings = mel_settings(info)
    mean = None if info.get("mean") is None else np.asarray(info["mean"], np.float32)
    std = None if info.get("std") is None else np.asarray(info["std"], np.float32)
    utterance = mean is None and info.get("normalize") == "utterance"

    def fn(signal, length):
        if frontend:
            feats = logmel_jnp(signal, settings)
            frames = 1 + jnp.maximum(length - settings.n_fft, 0) // settings.hop_length
        else:
            feats, frames = signal, length
        # broadcasted_iota, not arange()[None]: jax2onnx cannot index a symbolic dimension
        mask = jax.lax.broadcasted_iota(jnp.int32, feats.shape[:2], 1) < frames[:, None]
        if frontend and mean is not None:
            feats = (feats - mean) / std
        elif frontend and utterance:
            m = mask[..., None].astype(feats.dtype)
            count = jnp.maximum(m.sum(axis=1, keepdims=True), 1.0)
            mu = (feats * m).sum(axis=1, keepdims=True) / count
            var = (jnp.square(feats - mu) * m).sum(axis=1, keepdims=True) / count
            feats = (feats - mu) / jnp.maximum(jnp.sqrt(var), 1e-5)
        with convolution_ops():  # LiteRT/ONNX kernels, not XLA's matmul forms
            return model.apply(variables, feats, mask, train=False)

    return fn


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """The signal input: audio ``(1, N)`` or log-Mel ``(1, T, F)``; ``length=None``: dynamic T."""

    frontend: bool
    length: int | None  # time steps of the signal input (samples or frames)
    feature_dim: int

    @property
    def shape(self) -> tuple[int | str, ...]:
        t = "T" if self.length is None else self.length
        return (1, t) if self.frontend else (1, t, self.feature_dim)


def input_spec(info: dict[str, Any], frontend: bool, seconds: float, dynamic_time: bool
               ) -> InputSpec:
    """The signal input of a run's graph: ``seconds`` long, or a symbolic time axis."""
    settings = mel_settings(info)
    if frontend:
        if dynamic_time:
            raise ValueError("a dynamic time axis needs the log-Mel input (no --frontend): the "
                             "in-graph framing needs a static number of samples")
        if abs(float(info.get("frame_rate", settings.frame_rate)) - settings.frame_rate) > 1e-6:
            raise ValueError(f"--frontend computes {settings.frame_rate:g} frames/s but the run "
                             f"was trained on {info['frame_rate']} frames/s features")
        return InputSpec(True, int(round(seconds * settings.sample_rate)), settings.num_mels)
    frames = None if dynamic_time else int(round(seconds * float(info.get("frame_rate", 100))))
    return InputSpec(False, frames, int(info["feature_dim"]))
