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

from hrf_jax import random_bits
from hrf_jax.attention import MultiHeadAttention
from hrf_jax.hrf import HRFSpec

Array = jax.Array


class Dropout(nn.Module):
    """Inverted dropout drawing 16 random bits per element instead of ``nn.Dropout``'s 32.

    One 32-bit draw serves two elements, which halves the random-number work that dominates
    dropout on CPU (threefry); the drop probability is ``rate`` rounded to a multiple of
    ``2**-16``. The bits are ``jax.random.bits``'s, drawn by ``hrf_jax.random_bits`` so that
    XLA fuses the hash with the mask's arithmetic instead of running JAX's CPU loop. Uses the
    ``dropout`` rng collection, like ``nn.Dropout``.
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
        bits = random_bits.bits(self.make_rng("dropout"), x.shape[:-1] + ((c + 1) // 2,))
        halves = jnp.concatenate([bits & 0xFFFF, bits >> 16], axis=-1)[..., :c]
        keep = halves >= jnp.uint32(round(self.rate * 2**16))
        return jnp.where(keep, x / jnp.asarray(1 - self.rate, x.dtype), 0).astype(x.dtype)


class FeedForward(nn.Module):
    """Transformer FFN ``fc2(dropout(act(fc1(x))))``: ``(B, T, d) -> (B, T, d)``.

    ``hrf`` targets ``ffn`` (an HRF chain inside ``fc1``, the paper's place) and ``ffn2``
    (inside ``fc2``) apply here. ``mask (B, T)`` keeps padded tokens out of the statistics of
    an ``hrf_norm="batchnorm"`` chain.
    """

    hidden: int
    activation: Callable[[Array], Array] = nn.relu
    dropout: float = 0.0
    hrf: HRFSpec = HRFSpec()

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, *, train: bool = False) -> Array:
        h = self.activation(self.hrf.dense(self.hidden, "ffn", "fc1")(x, mask, train=train))
        h = Dropout(self.dropout, deterministic=not train)(h)
        return self.hrf.dense(x.shape[-1], "ffn2", "fc2")(h, mask, train=train)


class EncoderLayer(nn.Module):
    """Transformer encoder layer, post-LN (Vaswani) or pre-LN; HRF inside the FFN branch.

    Post-LN: ``x = LN(x + drop(attn(x)))``, ``x = LN(x + drop(ffn(x)))``. Pre-LN puts the LN
    first in each branch, so the HRF layer follows it and the residual skips both.
    ``window`` makes the attention local. ``(B, T, d), (B, T) -> (B, T, d)``.

    Options for reference implementations (defaults: this project's behaviour):
    ``ln_epsilon`` of both LayerNorms (torch uses 1e-5); ``attention_dropout`` on the
    attention weights while training (unfused attention then); ``activation_dropout`` after
    the FFN activation (None: ``dropout``); ``window_edges`` ``"masked"`` (a local window sees
    only real keys) or ``"zeros"`` (keys in reach beyond the utterance count as zero keys,
    as in code that zero-pads K/V). ``pos`` given to the call, ``(T, d)`` or ``(B, T, d)``,
    is added to the attention input only (queries, keys and values), not to the residual.
    """

    num_heads: int
    ffn_dim: int
    hrf: HRFSpec = HRFSpec()
    dropout: float = 0.1
    pre_ln: bool = False
    window: int | None = None
    ln_epsilon: float = 1e-6
    attention_dropout: float = 0.0
    activation_dropout: float | None = None
    window_edges: str = "masked"

    @nn.compact
    def __call__(self, x: Array, mask: Array, *, train: bool = False,
                 pos: Array | None = None) -> Array:
        if self.window_edges not in ("masked", "zeros"):
            raise ValueError(f"window_edges must be 'masked' or 'zeros', got {self.window_edges!r}")
        drop = Dropout(self.dropout, deterministic=not train)
        attn = MultiHeadAttention(self.num_heads, self.hrf, self.window, self.attention_dropout,
                                  self.window_edges == "zeros", name="attn")
        inner = self.dropout if self.activation_dropout is None else self.activation_dropout
        ffn = FeedForward(self.ffn_dim, nn.relu, inner, self.hrf, name="ffn")
        ln_attn = nn.LayerNorm(self.ln_epsilon, name="ln_attn")
        ln_ffn = nn.LayerNorm(self.ln_epsilon, name="ln_ffn")

        def attend(h: Array) -> Array:
            h = h if pos is None else h + pos.astype(h.dtype)
            return attn(h, mask, deterministic=not train)

        if self.pre_ln:
            x = x + drop(attend(ln_attn(x)))
            return x + drop(ffn(ln_ffn(x), mask, train=train))
        x = ln_attn(x + drop(attend(x)))
        return ln_ffn(x + drop(ffn(x, mask, train=train)))
