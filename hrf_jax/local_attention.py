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

One utterance (batch 1, not differentiated: inference, export) takes ``_forward_one``, where
the per-offset head sums are matmuls with a head indicator: XLA's CPU reductions over the
16-wide head axis are ~10x slower per element at batch 1 than at batch 4 (measured, see
``_forward_one``). Batches above one and every gradient keep the window loop below.

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


def _forward_one(q: Array, k: Array, v: Array, mask: Array, window: int,
                 zero_edges: bool) -> Array:
    """``_forward``'s output for a batch of one, summing heads by matmuls.

    At batch 1 XLA's CPU reductions over the 16-wide head axis (one per offset) run ~10x
    slower per element than at batch 4 (profile: ~0.28 ms each at T=651; the local attention
    was ~75 % of a SpeechFormer-S utterance). The products of all offsets go through one
    matmul with a ``(N*H, N)`` head indicator (its transpose spreads the weights back), so
    the reductions become dots; equal to ``_forward`` up to float summation order.
    """
    b, t, n, h = q.shape
    half = window // 2
    heads = (jnp.arange(n * h)[:, None] // h == jnp.arange(n)[None, :]).astype(q.dtype)
    qf, kf, vf = (x.reshape(b, t, n * h) for x in (q, k, v))
    kp, vp = _pad_time(kf, half, half), _pad_time(vf, half, half)
    mp = jnp.pad(mask, [(0, 0), (half, half)], constant_values=zero_edges)
    # HIGHEST: a TF32/bf16 default (accelerators) would round the scores; free on CPU
    dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
    prods = jnp.stack([qf * _view(kp, o, t) for o in range(window)], 2)  # (B, T, W, N*H)
    scores = dot(prods, heads) * jnp.asarray(h**-0.5, q.dtype)  # (B, T, W, N)
    allowed = jnp.stack([_view(mp, o, t) for o in range(window)], -1)[..., None]
    probs = jax.nn.softmax(jnp.where(allowed, scores, jnp.finfo(scores.dtype).min), axis=2)
    weights = dot(jnp.where(allowed, probs, 0), heads.T)  # (B, T, W, N*H)
    out = sum(weights[:, :, o] * _view(vp, o, t) for o in range(window))
    return out.reshape(b, t, n, h)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _banded(q: Array, k: Array, v: Array, mask: Array, dropout_mask: Array | None,
            window: int, zero_edges: bool) -> Array:
    # the primal runs only when nothing differentiates it (eval, inference): one utterance
    # takes the matmul form; training always goes through _local_attention_fwd below
    if q.shape[0] == 1 and dropout_mask is None:
        return _forward_one(q, k, v, mask, window, zero_edges)
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

    def at_keys(per_offset: Array, x: Array) -> Array:
        # offset o pairs query i with key i + o - half, so key j collects query
        # j + half - o: shift the inputs (views of padded arrays) rather than the products,
        # which XLA then sums in one fused pass; padding each product onto the key axis
        # instead materialised `window` padded full-size terms per call
        pp, xp = _pad_time(per_offset, half, half), _pad_time(x, half, half)
        return sum(_view(pp, 2 * half - o, t)[..., o, None] * _view(xp, 2 * half - o, t)
                   for o in range(window))

    d_k = at_keys(d_scores, q)
    d_v = at_keys(weights, d_out)
    return d_q, d_k, d_v, None, None  # the masks get no gradient


_banded.defvjp(_local_attention_fwd, _local_attention_bwd)
