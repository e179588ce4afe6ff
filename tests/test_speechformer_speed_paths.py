"""The one-utterance (batch 1) path of the local attention and the compile-time positional
encoding of SpeechFormer give what the general formulation gives (issue #15, item 2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrf_jax.local_attention import _forward, _forward_one, local_attention
from hrf_jax.models import build_model

TOL = {"rtol": 1e-5, "atol": 1e-6}


def dense_reference(q, k, v, mask, window, zero_edges):
    """O(T^2) local attention: the definition, independent of both banded formulations."""
    t, h = q.shape[1], q.shape[-1]
    half = window // 2
    if zero_edges:  # keys in reach beyond the utterance are zero keys with zero values
        real = mask[:, :, None, None]
        k, v = jnp.where(real, k, 0), jnp.where(real, v, 0)
    i, j = np.arange(t)[:, None], np.arange(-half, t + half)[None, :]
    band = np.abs(i - j) <= half  # (T, T + 2h): padded key axis
    kp = jnp.pad(k, [(0, 0), (half, half), (0, 0), (0, 0)])
    vp = jnp.pad(v, [(0, 0), (half, half), (0, 0), (0, 0)])
    keys = jnp.pad(mask, [(0, 0), (half, half)], constant_values=zero_edges)
    if zero_edges:
        keys = jnp.ones_like(keys)
    allowed = band[None, None] & keys[:, None, None, :]  # (B, 1, T, T + 2h)
    s = jnp.einsum("bqnh,bknh->bnqk", q, kp) * h**-0.5
    p = jax.nn.softmax(jnp.where(allowed, s, jnp.finfo(s.dtype).min), -1)
    p = jnp.where(allowed, p, 0)
    return jnp.einsum("bnqk,bknh->bqnh", p, vp)


def qkv(batch, t, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal((batch, t, 8, 16)), jnp.float32) for _ in range(3)]


@pytest.mark.parametrize("zero_edges", [False, True])
@pytest.mark.parametrize(("t", "length", "window"), [(651, 651, 5), (131, 90, 9), (27, 27, 9),
                                                     (7, 4, 9), (40, 1, 5)])
def test_one_utterance_path_matches(t, length, window, zero_edges):
    q, k, v = qkv(1, t)
    mask = jnp.asarray(np.arange(t)[None] < length)
    with jax.default_matmul_precision("highest"):
        fast = jax.jit(local_attention, static_argnums=4, static_argnames="zero_edges")(
            q, k, v, mask, window, zero_edges=zero_edges)
        ref = dense_reference(q, k, v, mask, window, zero_edges)
        # the general formulation, as every batch above one still runs it
        kz, vz, mz = (k, v, mask)
        if zero_edges:
            real = mask[:, :, None, None]
            kz, vz, mz = jnp.where(real, k, 0), jnp.where(real, v, 0), jnp.ones_like(mask)
        general = _forward(q, kz, vz, mz, None, window, zero_edges)[0]
        direct = _forward_one(q, kz, vz, mz, window, zero_edges)
    np.testing.assert_allclose(fast, ref, **TOL)
    np.testing.assert_allclose(fast, general, **TOL)
    np.testing.assert_allclose(direct, general, **TOL)
    # a query past the end of a masked utterance sees no key: zeros, not NaN
    assert np.isfinite(np.asarray(fast)).all()


@pytest.mark.parametrize("zero_edges", [False, True])
def test_gradients_at_batch_one_unchanged(zero_edges):
    t, window = 60, 5
    q, k, v = qkv(1, t, seed=1)
    mask = jnp.asarray(np.arange(t)[None] < 45)
    w = jnp.asarray(np.random.default_rng(2).standard_normal((1, t, 8, 16)), jnp.float32)

    def loss(fn):
        return lambda q, k, v: (fn(q, k, v, mask, window, zero_edges) * w).sum()

    banded = lambda q, k, v, m, win, z: local_attention(q, k, v, m, win, zero_edges=z)
    with jax.default_matmul_precision("highest"):
        got = jax.grad(loss(banded), argnums=(0, 1, 2))(q, k, v)
        want = jax.grad(loss(dense_reference), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _speechformer(**overrides):
    model = build_model("speechformer", "light", num_classes=4, input_dim_proj=None,
                        **overrides)
    rng = np.random.default_rng(0)
    feats = jnp.asarray(rng.standard_normal((2, 651, 128)), jnp.float32)
    mask = jnp.asarray(np.arange(651)[None] < np.array([[500], [651]]))
    variables = model.init(jax.random.PRNGKey(0), feats[:1], mask[:1])
    return model, variables, feats, mask


@pytest.mark.parametrize("reference", [False, True])
def test_speechformer_one_utterance_equals_batched(reference):
    """Batch 1 (matmul path) gives row 0 of a batch of 2 (general path), padded row too."""
    overrides = {"window_edges": "zeros", "attention_dropout": 0.1} if reference else {}
    model, variables, feats, mask = _speechformer(**overrides)
    with jax.default_matmul_precision("highest"):
        apply = jax.jit(lambda f, m: model.apply(variables, f, m, train=False))
        for row in (0, 1):
            one = apply(feats[row:row + 1], mask[row:row + 1])
            both = apply(feats, mask)
            np.testing.assert_allclose(one[0], both[row], rtol=1e-5, atol=1e-5)


def test_speechformer_train_mode_outputs_and_gradients():
    """Training at batch 1: the forward outside ``grad`` (matmul path) equals the value that
    ``value_and_grad`` computes through the custom VJP (general path), same dropout draw."""
    model, variables, feats, mask = _speechformer()
    rngs = {"dropout": jax.random.PRNGKey(3)}

    def loss(params, f, m, weights):
        logits = model.apply({**variables, "params": params}, f, m, train=True, rngs=rngs)
        return (logits * weights[:, None]).sum()

    with jax.default_matmul_precision("highest"):
        plain = loss(variables["params"], feats[:1], mask[:1], jnp.ones(1))
        value, grads = jax.value_and_grad(loss)(variables["params"], feats[:1], mask[:1],
                                                jnp.ones(1))
    np.testing.assert_allclose(plain, value, rtol=1e-5, atol=1e-5)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_positional_encoding_is_the_sinusoid():
    """The table evaluated while tracing (a constant of the step) equals the one in jit."""
    from hrf_jax.attention import sinusoidal_encoding

    want = jax.jit(lambda: sinusoidal_encoding(jnp.arange(651), 128))()
    with jax.ensure_compile_time_eval():
        eager = sinusoidal_encoding(jnp.arange(651), 128)
    np.testing.assert_allclose(eager, want, rtol=0, atol=2e-6)
