"""Padding-aware primitives: every op here reads a ``(B, T)`` mask of real frames.

Padding never changes a prediction, so padded frames are zeroed before they could mix with
real ones, pooled means count real frames only, and BatchNorm statistics skip padding.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

BN_EPSILON = 1e-5


def zero_padding(x: Array, mask: Array) -> Array:
    """Zeros padded frames: ``x (B, T, ...)``, ``mask (B, T)``; also clears NaN/inf there."""
    return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)), x, 0)


def masked_mean(x: Array, mask: Array) -> Array:
    """Mean over real frames: ``(B, T, C), (B, T) -> (B, C)``; all-padding rows give zeros."""
    total = zero_padding(x, mask).sum(axis=1)
    count = jnp.maximum(mask.sum(axis=1, keepdims=True), 1).astype(x.dtype)
    return total / count


def lengths_after_conv(lengths: Array, kernel: int = 3, stride: int = 2) -> Array:
    """Real-frame count after a VALID conv: output ``t`` is real iff its whole receptive field is.

    ``(L - kernel) // stride + 1`` clipped at 0, so real outputs never read padded inputs.
    """
    return jnp.maximum((lengths - kernel) // stride + 1, 0)


def length_mask(lengths: Array, length: int) -> Array:
    """``(B,)`` lengths -> ``(B, length)`` bool prefix mask."""
    # an iota, not ``jnp.arange(length)[None]``: jax2onnx can export it for a symbolic length
    iota = jax.lax.broadcasted_iota(lengths.dtype, (lengths.shape[0], length), 1)
    return iota < lengths[:, None]


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the last axis whose batch statistics use real frames only.

    ``x (..., C)``, ``mask x.shape[:-1]``. Collection ``batch_stats`` holds ``mean``/``var``
    (biased, like Flax's BatchNorm); train mode uses batch statistics and updates them
    (not during ``init``), eval mode uses the running ones.
    """

    # 0.9 = PyTorch's BatchNorm default (momentum=0.1 there), as in ESPnet's Conformer;
    # Flax's 0.99 left the running statistics far from the data after a few hundred steps
    # and put a briefly trained large Conformer at chance in eval mode.
    momentum: float = 0.9
    epsilon: float = BN_EPSILON

    @nn.compact
    def __call__(self, x: Array, mask: Array, *, train: bool = False) -> Array:
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", nn.initializers.ones_init(), (c,))
        bias = self.param("bias", nn.initializers.zeros_init(), (c,))
        if train:
            axes = tuple(range(x.ndim - 1))
            m = mask[..., None]
            count = jnp.maximum(mask.sum(), 1).astype(x.dtype)
            mean = jnp.where(m, x, 0).sum(axes) / count
            var = jnp.where(m, jnp.square(x - mean), 0).sum(axes) / count
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        else:
            mean, var = ra_mean.value, ra_var.value
        return (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
