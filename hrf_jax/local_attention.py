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

Two options of ``local_attention``: ``zero_edges`` reproduces reference code that zero-pads
the projected keys and values, so a query near either end of the utterance also gives weight
to zero keys (score 0, value 0); ``dropout_mask`` scales the attention weights (dropout while
training), kept by the VJP as one more ``(B, T, N, window)`` residual.
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


def _forward(q: Array, k: Array, v: Array, mask: Array, dropout_mask: Array | None,
             window: int, zero_edges: bool) -> tuple[Array, Array]:
    t, h = q.shape[1], q.shape[-1]
    half = window // 2
    kp, vp = _pad_time(k, half, half), _pad_time(v, half, half)
    # zero_edges: the zeros beyond either end are keys too (the caller zeroed padded k, v)
    mp = jnp.pad(mask, [(0, 0), (half, half)], constant_values=zero_edges)
    scale = jnp.asarray(h**-0.5, q.dtype)
    scores = jnp.stack([(q * _view(kp, o, t)).sum(-1) for o in range(window)], -1) * scale
    allowed = jnp.stack([_view(mp, o, t) for o in range(window)], -1)[:, :, None, :]
    # a large negative, not -inf: a padded query with no real key gives zeros, not NaN
    probs = jax.nn.softmax(jnp.where(allowed, scores, jnp.finfo(scores.dtype).min), axis=-1)
    probs = jnp.where(allowed, probs, 0)  # (B, T, N, window)
    weights = probs if dropout_mask is None else probs * dropout_mask
    out = sum(weights[..., o, None] * _view(vp, o, t) for o in range(window))
    return out, probs


def local_attention(q: Array, k: Array, v: Array, mask: Array, window: int, *,
                    zero_edges: bool = False, dropout_mask: Array | None = None) -> Array:
    """``q, k, v (B, T, N, H)``, ``mask (B, T)`` bool, odd ``window`` -> ``(B, T, N, H)``.

    Padded keys get no weight; a query without any real key in reach returns zeros.
    ``zero_edges``: every key position in reach that lies outside the utterance (beyond
    either end, or padded) counts as a zero key with a zero value, as in reference code that
    zero-pads K/V; a batch then gives each utterance what it gives alone, unpadded.
    ``dropout_mask``: ``(B, T, N, window)`` multipliers of the attention weights after the
    softmax (dropout: 0 or ``1 / (1 - rate)``), slot ``o`` being key ``i + o - window // 2``.
    """
    if zero_edges:
        real = mask[:, :, None, None]
        k, v, mask = jnp.where(real, k, 0), jnp.where(real, v, 0), jnp.ones_like(mask)
    return _banded(q, k, v, mask, dropout_mask, window, zero_edges)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _banded(q: Array, k: Array, v: Array, mask: Array, dropout_mask: Array | None,
            window: int, zero_edges: bool) -> Array:
    return _forward(q, k, v, mask, dropout_mask, window, zero_edges)[0]


def _local_attention_fwd(q, k, v, mask, dropout_mask, window, zero_edges):
    out, probs = _forward(q, k, v, mask, dropout_mask, window, zero_edges)
    return out, (q, k, v, mask, dropout_mask, probs)


def _local_attention_bwd(window, zero_edges, residuals, d_out):
    q, k, v, mask, dropout_mask, probs = residuals
    t, h = q.shape[1], q.shape[-1]
    half = window // 2
    kp, vp = _pad_time(k, half, half), _pad_time(v, half, half)
    d_probs = jnp.stack([(d_out * _view(vp, o, t)).sum(-1) for o in range(window)], -1)
    weights = probs
    if dropout_mask is not None:
        d_probs, weights = d_probs * dropout_mask, probs * dropout_mask
    # softmax backward; probs are 0 at masked keys, so their score gradients are 0 too; zero
    # edge keys are zeros in kp, so their (constant) scores add nothing to d_q
    d_scores = probs * (d_probs - (probs * d_probs).sum(-1, keepdims=True))
    d_scores = d_scores * jnp.asarray(h**-0.5, q.dtype)
    d_q = sum(d_scores[..., o, None] * _view(kp, o, t) for o in range(window))

    def at_keys(terms: list[Array]) -> Array:
        # offset o pairs query i with key i + o - half: shift each term onto its keys
        total = sum(_pad_time(x, o, 2 * half - o) for o, x in enumerate(terms))
        return _view(total, half, t)

    d_k = at_keys([d_scores[..., o, None] * q for o in range(window)])
    d_v = at_keys([weights[..., o, None] * d_out for o in range(window)])
    return d_q, d_k, d_v, None, None  # the masks get no gradient


_banded.defvjp(_local_attention_fwd, _local_attention_bwd)
