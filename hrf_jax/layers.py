"""Transformer encoder blocks: dropout, the feed-forward network (where HRF goes by default)
and the encoder layer, post-LN or pre-LN.

The other shared blocks have rooms of their own: ``hrf`` (the HRF layer), ``attention``,
``masking`` (padding-aware ops, masked BatchNorm) and ``subsampling`` (conv front end).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrf_jax.attention import MultiHeadAttention
from hrf_jax.hrf import HRFSpec

Array = jax.Array


class Dropout(nn.Module):
    """Inverted dropout drawing 16 random bits per element instead of ``nn.Dropout``'s 32.

    One 32-bit draw serves two elements, which halves the random-number work that dominates
    dropout on CPU (threefry); the drop probability is ``rate`` rounded to a multiple of
    ``2**-16``. Uses the ``dropout`` rng collection, like ``nn.Dropout``.
    """

    rate: float
    deterministic: bool | None = None

    @nn.compact
    def __call__(self, x: Array, deterministic: bool | None = None) -> Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic or self.rate == 0:
            return x
        if not 0 <= self.rate < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {self.rate}")
        c = x.shape[-1]
        bits = jax.random.bits(self.make_rng("dropout"), x.shape[:-1] + ((c + 1) // 2,))
        halves = jnp.concatenate([bits & 0xFFFF, bits >> 16], axis=-1)[..., :c]
        keep = halves >= jnp.uint32(round(self.rate * 2**16))
        return jnp.where(keep, x / jnp.asarray(1 - self.rate, x.dtype), 0).astype(x.dtype)


class FeedForward(nn.Module):
    """Transformer FFN ``fc2(dropout(act(fc1(x))))``: ``(B, T, d) -> (B, T, d)``.

    ``hrf`` targets ``ffn`` (an HRF chain inside ``fc1``, the paper's place) and ``ffn2``
    (inside ``fc2``) apply here.
    """

    hidden: int
    activation: Callable[[Array], Array] = nn.relu
    dropout: float = 0.0
    hrf: HRFSpec = HRFSpec()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        h = self.activation(self.hrf.dense(self.hidden, "ffn", "fc1")(x))
        h = Dropout(self.dropout, deterministic=not train)(h)
        return self.hrf.dense(x.shape[-1], "ffn2", "fc2")(h)


class EncoderLayer(nn.Module):
    """Transformer encoder layer, post-LN (Vaswani) or pre-LN; HRF inside the FFN branch.

    Post-LN: ``x = LN(x + drop(attn(x)))``, ``x = LN(x + drop(ffn(x)))``. Pre-LN puts the LN
    first in each branch, so the HRF layer follows it and the residual skips both.
    ``window`` makes the attention local. ``(B, T, d), (B, T) -> (B, T, d)``.
    """

    num_heads: int
    ffn_dim: int
    hrf: HRFSpec = HRFSpec()
    dropout: float = 0.1
    pre_ln: bool = False
    window: int | None = None

    @nn.compact
    def __call__(self, x: Array, mask: Array, *, train: bool = False) -> Array:
        drop = Dropout(self.dropout, deterministic=not train)
        attn = MultiHeadAttention(self.num_heads, self.hrf, self.window, name="attn")
        ffn = FeedForward(self.ffn_dim, nn.relu, self.dropout, self.hrf, name="ffn")
        ln_attn, ln_ffn = nn.LayerNorm(name="ln_attn"), nn.LayerNorm(name="ln_ffn")
        if self.pre_ln:
            x = x + drop(attn(ln_attn(x), mask))
            return x + drop(ffn(ln_ffn(x), train=train))
        x = ln_attn(x + drop(attn(x, mask)))
        return ln_ffn(x + drop(ffn(x, train=train)))
