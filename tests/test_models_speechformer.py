"""SpeechFormer: window/merge sizes from durations, and local attention costing O(T x window)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_testutil import NUM_CLASSES, inputs

from hrf_jax import build_model
from hrf_jax.layers import EncoderLayer
from hrf_jax.local_attention import local_attention
from hrf_jax.models.speechformer import merge_tokens, stage_sizes


@pytest.mark.parametrize(
    "stage,window,merge",
    [
        (0, 5, 5),  # frame stage: 50 ms window at 10 ms; merge 50 ms -> 5 frames
        (1, 9, 5),  # phoneme stage (50 ms tokens): 400 ms = 8 tokens, made odd; 250 ms = 5
        (2, 9, 4),  # word stage (250 ms tokens): 2000 ms = 8 tokens -> 9; 1000 ms = 4
        (3, None, None),  # utterance stage: global, no merge after it
    ],
)
def test_stage_sizes_follow_durations_at_10ms(stage, window, merge):
    windows, merges = stage_sizes(10.0)
    assert windows[stage] == window
    assert (merges[stage] if stage < len(merges) else None) == merge


def test_stage_sizes_follow_the_hop():
    # 20 ms hop: frames 50//20=2 -> 3, 400/20=20 // 2 = 10 -> 11, 2000/20=100 // 12 -> 9
    assert stage_sizes(20.0) == ((3, 11, 9, None), (2, 6, 4))


def _banded_reference(q, k, v, mask, window):
    t, h = q.shape[1], q.shape[-1]
    scores = jnp.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(h)
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    allowed = (np.abs(i - j) <= window // 2)[None, None] & mask[:, None, None, :]
    probs = jax.nn.softmax(jnp.where(allowed, scores, -1e30), axis=-1)
    return jnp.einsum("bnqk,bknh->bqnh", probs, v)


@pytest.mark.parametrize("window,frames", [(5, 23), (9, 40), (1, 7), (9, 3)])
def test_local_attention_equals_dense_band_mask(window, frames):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, (2, frames, 2, 4)) for key in keys)
    mask = jnp.arange(frames)[None, :] < jnp.array([[frames], [max(frames - 4, 1)]])
    with jax.default_matmul_precision("highest"):
        got = jax.jit(local_attention, static_argnums=4)(q, k, v, mask, window)
        want = jax.jit(_banded_reference, static_argnums=4)(q, k, v, mask, window)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    real = int(mask[1].sum())
    np.testing.assert_allclose(got[1, :real], want[1, :real], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window,frames", [(5, 23), (9, 12), (3, 6)])
def test_local_attention_gradients_equal_autodiff_of_dense_band_mask(window, frames):
    # the hand-written VJP against autodiff of the T x T reference; the cotangent is zero on
    # padded queries, whose outputs nothing downstream reads
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    q, k, v, ct = (jax.random.normal(key, (2, frames, 2, 4)) for key in keys)
    mask = jnp.arange(frames)[None, :] < jnp.array([[frames], [max(frames - 4, 1)]])
    ct = ct * mask[:, :, None, None]
    def grads(attention):
        loss = lambda *a: (attention(*a, mask, window) * ct).sum()
        return jax.jit(jax.grad(loss, (0, 1, 2)))(q, k, v)

    with jax.default_matmul_precision("highest"):
        got, want = grads(local_attention), grads(_banded_reference)
    for name, g, w in zip("qkv", got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=f"d{name}")
        assert float(jnp.abs(g).max()) > 0, name


def _gathered_reference(q, k, v, mask, window, zero_edges, dropout_mask):
    # each query's window gathered from zero-padded keys: the official code's formulation
    half, t, h = window // 2, q.shape[1], q.shape[-1]
    if zero_edges:  # every key outside the utterance, padded or beyond the ends, is zero
        k, v = (jnp.where(mask[:, :, None, None], a, 0) for a in (k, v))
        mask = jnp.ones_like(mask)
    idx = np.arange(t)[:, None] + np.arange(window)
    real = jnp.pad(mask, [(0, 0), (half, half)], constant_values=zero_edges)[:, idx]
    kw, vw = (jnp.pad(a, [(0, 0), (half, half), (0, 0), (0, 0)])[:, idx] for a in (k, v))
    scores = jnp.einsum("btnh,btwnh->btnw", q, kw) / np.sqrt(h)
    probs = jax.nn.softmax(jnp.where(real[:, :, None, :], scores, -1e30), axis=-1)
    if dropout_mask is not None:
        probs = probs * dropout_mask
    return jnp.einsum("btnw,btwnh->btnh", probs, vw)


@pytest.mark.parametrize("zero_edges,dropout", [(True, False), (False, True), (True, True)])
def test_local_attention_zero_edges_and_dropout_values_and_gradients(zero_edges, dropout):
    window, frames = 5, 12
    keys = jax.random.split(jax.random.PRNGKey(2), 5)
    q, k, v, ct = (jax.random.normal(key, (2, frames, 2, 4)) for key in keys[:4])
    mask = jnp.arange(frames)[None, :] < jnp.array([[frames], [frames - 4]])
    ct = ct * mask[:, :, None, None]
    drop = None
    if dropout:
        drop = jax.random.bernoulli(keys[4], 0.7, (2, frames, 2, window)) / 0.7

    def run(attention, zero_edges=zero_edges):
        loss = lambda q, k, v: (attention(q, k, v, mask, window, zero_edges, drop) * ct).sum()
        return jax.jit(jax.value_and_grad(loss, (0, 1, 2)))(q, k, v)

    ours = lambda q, k, v, m, w, z, d: local_attention(q, k, v, m, w, zero_edges=z,
                                                       dropout_mask=d)
    with jax.default_matmul_precision("highest"):
        (got_loss, got), (want_loss, want) = run(ours), run(_gathered_reference)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    for name, g, w in zip("qkv", got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=f"d{name}")
    if zero_edges:  # the first query weighs the two zero keys before the utterance too
        masked = run(ours, False)[0]
        assert abs(float(masked - got_loss)) > 1e-3


@pytest.mark.parametrize("window", [None, 3])
def test_attention_dropout_acts_only_while_training(window):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 8))
    mask = jnp.arange(6)[None, :] < jnp.array([[6], [4]])
    layer = EncoderLayer(2, 8, dropout=0.0, window=window, attention_dropout=0.5)
    plain = EncoderLayer(2, 8, dropout=0.0, window=window)

    @jax.jit
    def outputs(key):
        v = layer.init(key, x, mask)
        trained = layer.apply(v, x, mask, train=True, rngs={"dropout": key})
        return layer.apply(v, x, mask), plain.apply(v, x, mask), trained

    evaluated, without, trained = outputs(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(evaluated, without)
    assert bool(jnp.isfinite(trained).all()) and float(jnp.abs(trained - without).max()) > 1e-3


def _largest_intermediate(fn, *args) -> int:
    """Element count of the largest value in ``fn``'s jaxpr, sub-jaxprs included."""
    def walk(jaxpr) -> int:
        best = 0
        for eqn in jaxpr.eqns:
            for var in eqn.outvars:
                best = max(best, int(np.prod(var.aval.shape)))
            for param in eqn.params.values():
                for sub in param if isinstance(param, tuple | list) else [param]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        best = max(best, walk(inner))
        return best
    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def test_local_attention_scores_grow_linearly_in_time():
    def sizes(t):
        q = jax.ShapeDtypeStruct((1, t, 8, 6), jnp.float32)
        m = jax.ShapeDtypeStruct((1, t), jnp.bool_)
        return _largest_intermediate(lambda a, b: local_attention(a, a, a, b, 9), q, m)
    small, big = sizes(2000), sizes(4000)
    assert big <= 2.1 * small  # a T x T score tensor would quadruple
    assert big < 4000 * 4000  # and never reaches T^2


def test_speechformer_forward_holds_no_t_squared_tensor():
    model = build_model("speechformer", num_classes=NUM_CLASSES)
    def largest(t):
        feats, mask = inputs(1, t)
        variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), feats, mask)
        return _largest_intermediate(lambda v, x, m: model.apply(v, x, m), variables, feats, mask)
    small, big = largest(1000), largest(2000)
    assert big <= 2.1 * small
    assert big < 2000 * 2000 // 4


def test_merge_tokens_averages_only_real_frames():
    x = jnp.arange(7.0)[None, :, None]
    mask = jnp.arange(7)[None] < 6
    merged, merged_mask = merge_tokens(x, mask, 4)
    np.testing.assert_allclose(merged[0, :, 0], [1.5, 4.5])  # (0+1+2+3)/4, (4+5)/2
    assert merged_mask.tolist() == [[True, True]]
