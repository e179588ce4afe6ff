"""Banded (local) self-attention in O(T x window) time and memory, with a hand-written VJP.

Query ``i`` sees the real keys ``j`` with ``|i - j| <= window // 2``. Scores are formed one
window offset at a time from the keys shifted by that offset, so nothing of size ``T x T``
exists and no Python loop runs over windows, only over the (small, static) offsets.

Why a custom VJP: under plain autodiff every shifted copy of ``k`` and ``v`` becomes a
residual kept for the backward pass, so XLA materialises ``2 * window`` full-size copies per
layer. The backward below keeps only ``q, k, v``, the mask and the ``(B, T, N, window)``
probabilities, and re-reads shifted views inside fused loops. Blocked batched matmuls
(``(B*T/blk, N, blk, 3*blk)`` scores) lost on CPU: many tiny batched dots plus neighbour
concatenations cost more than the elementwise window loop they replace.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


def _pad_time(x: Array, before: int, after: int) -> Array:
    return jnp.pad(x, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))


def _view(padded: Array, offset: int, length: int) -> Array:
    """Window offset ``offset`` of a time-padded array: ``(B, T + 2h, ...) -> (B, T, ...)``."""
    return jax.lax.slice_in_dim(padded, offset, offset + length, axis=1)


def _forward(q: Array, k: Array, v: Array, mask: Array, window: int) -> tuple[Array, Array]:
    t, h = q.shape[1], q.shape[-1]
    half = window // 2
    kp, vp, mp = (_pad_time(a, half, half) for a in (k, v, mask))
    scale = jnp.asarray(h**-0.5, q.dtype)
    scores = jnp.stack([(q * _view(kp, o, t)).sum(-1) for o in range(window)], -1) * scale
    allowed = jnp.stack([_view(mp, o, t) for o in range(window)], -1)[:, :, None, :]
    # a large negative, not -inf: a padded query with no real key gives zeros, not NaN
    probs = jax.nn.softmax(jnp.where(allowed, scores, jnp.finfo(scores.dtype).min), axis=-1)
    probs = jnp.where(allowed, probs, 0)  # (B, T, N, window)
    out = sum(probs[..., o, None] * _view(vp, o, t) for o in range(window))
    return out, probs


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def local_attention(q: Array, k: Array, v: Array, mask: Array, window: int) -> Array:
    """``q, k, v (B, T, N, H)``, ``mask (B, T)`` bool, odd ``window`` -> ``(B, T, N, H)``.

    Padded keys get no weight; a query without any real key in reach returns zeros.
    """
    return _forward(q, k, v, mask, window)[0]


def _local_attention_fwd(q, k, v, mask, window):
    out, probs = _forward(q, k, v, mask, window)
    return out, (q, k, v, mask, probs)


def _local_attention_bwd(window, residuals, d_out):
    q, k, v, mask, probs = residuals
    t, h = q.shape[1], q.shape[-1]
    half = window // 2
    kp, vp = _pad_time(k, half, half), _pad_time(v, half, half)
    d_probs = jnp.stack([(d_out * _view(vp, o, t)).sum(-1) for o in range(window)], -1)
    # softmax backward; probs are 0 at masked keys, so their score gradients are 0 too
    d_scores = probs * (d_probs - (probs * d_probs).sum(-1, keepdims=True))
    d_scores = d_scores * jnp.asarray(h**-0.5, q.dtype)
    d_q = sum(d_scores[..., o, None] * _view(kp, o, t) for o in range(window))

    def at_keys(terms: list[Array]) -> Array:
        # offset o pairs query i with key i + o - half: shift each term onto its keys
        total = sum(_pad_time(x, o, 2 * half - o) for o, x in enumerate(terms))
        return _view(total, half, t)

    d_k = at_keys([d_scores[..., o, None] * q for o in range(window)])
    d_v = at_keys([probs[..., o, None] * d_out for o in range(window)])
    return d_q, d_k, d_v, None


local_attention.defvjp(_local_attention_fwd, _local_attention_bwd)
