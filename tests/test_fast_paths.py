"""The convolutions' matmul forms (hrf_jax.conv_ops) compute the function of their convolution
ops (export's form): the Conformer's depthwise conv (banded matmul or shifted sums) is
``nn.Conv``'s grouped conv, the conv subsampling's im2col (its training form) is its
convolution, outputs and gradients, on padded batches; whole models agree in eval mode, and
each model and mode traces the form it should."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrf_jax.conv_ops import convolution_ops
from hrf_jax.masking import zero_padding
from hrf_jax.models import build_model
from hrf_jax.models.conformer import DepthwiseConv1D
from hrf_jax.subsampling import ConvSubsampling, chunk_size


def _padded(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    lengths = rng.integers(1, shape[1] + 1, shape[0])
    lengths[0] = shape[1]
    mask = np.arange(shape[1])[None] < lengths[:, None]
    x[~mask] = 1e3  # padding junk
    return jnp.asarray(x), jnp.asarray(mask)


def _outputs_and_grads(fn, variables, x):
    loss = lambda v, a: (jnp.tanh(fn(v, a)) ** 2).sum()
    with jax.default_matmul_precision("highest"):
        return jax.jit(lambda v, a: (fn(v, a), jax.grad(loss, (0, 1))(v, a)))(variables, x)


def _assert_close(got, want, rtol=1e-5, atol=1e-5):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


# T <= 4K takes the banded matmul, longer inputs the shifted sums
@pytest.mark.parametrize("t", [9, 28, 29])
def test_depthwise_fast_is_nn_conv(t):
    k, c = 7, 5
    x, mask = _padded((3, t, c))
    conv = nn.Conv(c, (k,), padding="SAME", feature_group_count=c)
    ours = DepthwiseConv1D(k)
    want_vars = conv.init(jax.random.PRNGKey(1), x)
    got_vars = ours.init(jax.random.PRNGKey(1), x)
    # same tree and init, so checkpoints, converters and BatchNorm folding are unchanged
    assert jax.tree.map(jnp.shape, got_vars) == jax.tree.map(jnp.shape, want_vars)
    np.testing.assert_array_equal(got_vars["params"]["kernel"], want_vars["params"]["kernel"])
    variables = {"params": {"kernel": want_vars["params"]["kernel"],
                            "bias": jax.random.normal(jax.random.PRNGKey(2), (c,))}}
    want = _outputs_and_grads(lambda v, a: conv.apply(v, zero_padding(a, mask)), variables, x)
    for fast in (True, False):
        got = _outputs_and_grads(lambda v, a, fast=fast: ours.apply(v, zero_padding(a, mask),
                                                                    fast=fast), variables, x)
        _assert_close(got, want)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_subsampling_im2col_is_the_convolution(padding):
    sub = ConvSubsampling(6, 8, padding=padding, flatten="channel_freq")
    x, mask = _padded((3, 23, 11))
    variables = sub.init(jax.random.PRNGKey(0), x, mask)
    train = lambda v, a: sub.apply(v, a, mask, train=True)[0]
    got = _outputs_and_grads(train, variables, x)
    with convolution_ops():
        want = _outputs_and_grads(train, variables, x)
    _assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backbone", ["conformer", "convtransformer"])
def test_models_in_eval_mode_match_their_convolution_ops(backbone):
    model = build_model(backbone, "light", num_classes=4, num_layers=2)
    x, mask = _padded((3, 40, 16))
    variables = model.init(jax.random.PRNGKey(0), x, mask)
    apply = lambda v, a: model.apply(v, a, mask)
    with jax.default_matmul_precision("highest"):
        fast = jax.jit(apply)(variables, x)
        with convolution_ops():
            ops = jax.jit(apply)(variables, x)
    np.testing.assert_allclose(fast, ops, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("backbone", "eval_convs", "export_convs"),
                         [("conformer", 0, 3), ("convtransformer", 1, 2)])
def test_each_model_and_mode_traces_its_form(backbone, eval_convs, export_convs):
    model = build_model(backbone, "light", num_classes=4, num_layers=1)
    x, mask = _padded((1, 40, 16))
    variables = model.init(jax.random.PRNGKey(0), x, mask)

    def convs(**kwargs):
        rngs = {"dropout": jax.random.PRNGKey(1)}
        jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, mask, rngs=rngs, **kwargs))(variables)
        return str(jaxpr).count("conv_general_dilated")

    train = {"train": True, "mutable": ["batch_stats"]}
    assert convs(**train) == 0  # im2col subsampling (and banded depthwise conv)
    # inference: the Conformer keeps im2col, the ConvTransformer's first conv is taps (one
    # fused elementwise pass), its second a convolution op
    assert convs() == eval_convs
    with convolution_ops():  # export: one op per conv (the Conformer's depthwise conv too)
        assert convs() == export_convs
        assert convs(**train) == export_convs


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_chunked_training_front_end_is_the_whole_batch(padding):
    # B=6, T=23, F=11, 6 channels: a first-conv output of 11 x 5 x 6 float32 per utterance
    # (12 x 6 x 6 with "same"), so a budget of two "same" ones makes 2 utterances a chunk,
    # 3 chunks (a scan of rematerialised chunks); 0 runs the batch at once
    x, mask = _padded((6, 23, 11))
    whole = ConvSubsampling(6, 8, padding=padding, train_chunk_bytes=0)
    chunked = ConvSubsampling(6, 8, padding=padding, train_chunk_bytes=2 * 12 * 6 * 6 * 4)
    variables = whole.init(jax.random.PRNGKey(0), x, mask)
    assert jax.tree.map(jnp.shape, chunked.init(jax.random.PRNGKey(0), x, mask)) == \
        jax.tree.map(jnp.shape, variables)

    def train(module):
        return lambda v, a: module.apply(v, a, mask, train=True)[0]

    np.testing.assert_array_equal(chunked.apply(variables, x, mask, train=True)[1],
                                  whole.apply(variables, x, mask, train=True)[1])
    assert "scan" in str(jax.make_jaxpr(train(chunked))(variables, x))
    assert "scan" not in str(jax.make_jaxpr(train(whole))(variables, x))
    _assert_close(_outputs_and_grads(train(chunked), variables, x),
                  _outputs_and_grads(train(whole), variables, x))

    # the chunks' backward pass recomputes the first conv's matmul, not the second's: one dot
    # more in the gradient's program than unchunked (two when each chunk's forward ran again)
    def dots(module):
        loss = lambda v: train(module)(v, x).sum()  # noqa: E731
        return str(jax.make_jaxpr(jax.grad(loss))(variables)).count("dot_general")

    assert dots(whole) == 8
    assert dots(chunked) == 9


def test_chunk_size_divides_the_batch_and_stays_off_accelerators(monkeypatch):
    mib = 2**20
    assert chunk_size(32, mib, 2 * mib) == 2
    assert chunk_size(32, 2 * mib - 1, 2 * mib) == 1
    assert chunk_size(30, mib // 8, 2 * mib) == 15  # 16 utterances would not divide the batch
    assert chunk_size(7, mib // 8, 2 * mib) == 7
    assert chunk_size(32, 3 * mib, 2 * mib) == 32  # one utterance does not fit: no chunks
    assert chunk_size(32, mib, 0) == 32
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert chunk_size(32, mib, 2 * mib) == 32
