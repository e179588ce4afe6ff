"""Masked multi-head self-attention (global, local-window, relative-position) and the
sinusoidal positional encodings it and the backbones read.

q/k/v/out projections are ``HRFDense`` (targets ``attn_in``/``attn_out``). Attention-weight
dropout is off by default so the fused ``jax.nn.dot_product_attention`` applies (blocks use
residual dropout); ``MultiHeadAttention(attention_dropout=...)`` switches to an unfused path
while training.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrf_jax.hrf import HRFSpec
from hrf_jax.local_attention import local_attention

Array = jax.Array


def sinusoidal_encoding(positions: Array, dim: int) -> Array:
    """Fixed sinusoidal encoding (Vaswani et al. 2017): positions ``(L,)`` -> ``(L, dim)``.

    Channel ``j`` uses frequency ``10000^(-2*(j//2)/dim)``, sine on even and cosine on odd
    channels; negative positions are allowed (relative encodings).
    """
    j = jnp.arange(dim)
    inv_freq = jnp.power(10000.0, -2.0 * (j // 2) / dim)
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.where(j % 2 == 0, jnp.sin(angles), jnp.cos(angles))


def dropout_mask(rng: Array, rate: float, shape: tuple[int, ...], dtype: jnp.dtype) -> Array:
    """Multipliers of inverted dropout at ``rate``: 0 (dropped) or ``1 / (1 - rate)``."""
    keep = jax.random.bernoulli(rng, 1.0 - rate, shape)
    return jnp.where(keep, jnp.asarray(1.0 / (1.0 - rate), dtype), jnp.asarray(0, dtype))


def _heads(x: Array, num_heads: int) -> Array:
    """``(B, T, d) -> (B, T, N, d/N)``."""
    b, t, d = x.shape
    if d % num_heads:
        raise ValueError(f"width {d} is not divisible by {num_heads} heads")
    return x.reshape(b, t, num_heads, d // num_heads)


def _qkv(x: Array, hrf: HRFSpec, num_heads: int) -> tuple[Array, Array, Array]:
    """Query, key and value projections of ``x (B, T, d)``, each ``(B, T, N, d/N)``."""
    d = x.shape[-1]
    q, k, v = (_heads(hrf.dense(d, "attn_in", name)(x), num_heads)
               for name in ("query", "key", "value"))
    return q, k, v


class MultiHeadAttention(nn.Module):
    """Masked multi-head self-attention, global or local (``window`` frames, odd).

    ``(B, T, d), (B, T) -> (B, T, d)``; padded keys get no weight. ``attention_dropout``
    drops attention weights when ``deterministic`` is False (rng collection ``dropout``).
    ``zero_edges`` (local only): keys in reach beyond the utterance count as zero keys, see
    ``local_attention``.
    """

    num_heads: int
    hrf: HRFSpec = HRFSpec()
    window: int | None = None
    attention_dropout: float = 0.0
    zero_edges: bool = False

    @nn.compact
    def __call__(self, x: Array, mask: Array, *, deterministic: bool = True) -> Array:
        q, k, v = _qkv(x, self.hrf, self.num_heads)
        b, t, n, _ = q.shape
        drop = self.attention_dropout > 0 and not deterministic
        if self.window is not None:
            keep = None
            if drop:
                keep = dropout_mask(self.make_rng("dropout"), self.attention_dropout,
                                    (b, t, n, self.window), q.dtype)
            o = local_attention(q, k, v, mask, self.window, zero_edges=self.zero_edges,
                                dropout_mask=keep)
        elif not drop:
            o = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :])
        else:
            scores = jnp.einsum("bqnh,bknh->bnqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
            scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
            probs = jax.nn.softmax(scores, axis=-1) * dropout_mask(
                self.make_rng("dropout"), self.attention_dropout, scores.shape, q.dtype)
            o = jnp.einsum("bnqk,bknh->bqnh", probs, v)
        return self.hrf.dense(x.shape[-1], "attn_out", "out")(o.reshape(x.shape))


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (Dai et al. 2019).

    Scores ``(q + u) k^T + (q + v) p_{i-j}^T`` over ``sqrt(H)``, with ``p`` a projected
    sinusoidal encoding of the relative distance (ESPnet's ``RelPositionMultiHeadedAttention``).
    ``(B, T, d), (B, T) -> (B, T, d)``; the score matrix is ``T x T`` (global attention).
    ``pos_dropout`` drops entries of the sinusoidal table before its projection when
    ``deterministic`` is False (rng collection ``dropout``; one mask for the whole batch), as
    ESPnet's ``RelPositionalEncoding`` drops the position embeddings it returns.
    """

    num_heads: int
    hrf: HRFSpec = HRFSpec()
    pos_dropout: float = 0.0

    @nn.compact
    def __call__(self, x: Array, mask: Array, *, deterministic: bool = True) -> Array:
        t, d = x.shape[1], x.shape[2]
        q, k, v = _qkv(x, self.hrf, self.num_heads)
        h = d // self.num_heads
        rel = sinusoidal_encoding(jnp.arange(t - 1, -t, -1), d)  # distances T-1 .. -(T-1)
        if self.pos_dropout > 0 and not deterministic:
            rel = rel * dropout_mask(self.make_rng("dropout"), self.pos_dropout, rel.shape,
                                     rel.dtype)
        p = nn.Dense(d, use_bias=False, name="pos")(rel).reshape(2 * t - 1, self.num_heads, h)
        init = nn.initializers.xavier_uniform()
        u = self.param("pos_bias_u", init, (self.num_heads, h))
        w = self.param("pos_bias_v", init, (self.num_heads, h))
        bd = jnp.einsum("btnh,lnh->bntl", q + w, p)
        # row of distance i - j in ``rel`` is (T-1) - (i-j): gather the (T, T) band (a reshape
        # shift would avoid the gradient's scatter-add, but its length-squared reshape stops
        # ONNX export with a symbolic time axis; its gain was not measurable, BENCHMARKS.md)
        i, j = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
        bd = bd[:, :, i, (t - 1) - i + j]
        o = jax.nn.dot_product_attention(
            q + u, k, v, bias=bd / jnp.sqrt(h).astype(x.dtype), mask=mask[:, None, None, :]
        )
        return self.hrf.dense(d, "attn_out", "out")(o.reshape(x.shape))
