"""Training-only fast paths compute today's function: the Conformer's depthwise conv (banded
matmul or shifted sums) is ``nn.Conv``'s grouped conv, and the conv subsampling's train path
(im2col) is its eval path (XLA's conv), outputs and gradients, on padded batches."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrf_jax.masking import zero_padding
from hrf_jax.models.conformer import DepthwiseConv1D
from hrf_jax.subsampling import ConvSubsampling


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
def test_subsampling_train_path_is_eval_path(padding):
    # no BatchNorm or dropout in the subsampling: train only switches convolution -> im2col
    sub = ConvSubsampling(6, 8, padding=padding, flatten="channel_freq")
    x, mask = _padded((3, 23, 11))
    variables = sub.init(jax.random.PRNGKey(0), x, mask)
    got = _outputs_and_grads(lambda v, a: sub.apply(v, a, mask, train=True)[0], variables, x)
    want = _outputs_and_grads(lambda v, a: sub.apply(v, a, mask)[0], variables, x)
    _assert_close(got, want, rtol=1e-4, atol=1e-4)
