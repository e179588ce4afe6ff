"""StridedConv3x3 in each form (conv, im2col, one-channel taps) is nn.Conv(3x3, stride 2,
VALID or padding 1): same tree, init, output and gradients; ConvSubsampling's lengths follow
its padding and padding never leaks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrf_jax.subsampling import FORMS, ConvSubsampling, StridedConv3x3

SHAPES = [(2, 17, 12, 1), (2, 17, 12, 5), (1, 8, 7, 3), (3, 3, 3, 4), (1, 3, 4, 1)]


@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize(("shape", "form"), [(s, f) for s in SHAPES for f in FORMS
                                             if f != "taps" or s[-1] == 1])
def test_matches_flax_conv(shape, form, padding):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    conv = nn.Conv(6, (3, 3), strides=(2, 2), padding=[(padding, padding)] * 2)
    ours = StridedConv3x3(6, padding)
    want_vars = conv.init(jax.random.PRNGKey(1), x)
    got_vars = ours.init(jax.random.PRNGKey(1), x)
    assert jax.tree.map(jnp.shape, got_vars) == jax.tree.map(jnp.shape, want_vars)
    np.testing.assert_array_equal(got_vars["params"]["kernel"], want_vars["params"]["kernel"])
    variables = {"params": {"kernel": want_vars["params"]["kernel"],
                            "bias": jax.random.normal(jax.random.PRNGKey(2), (6,))}}

    def output_and_grads(fn):
        loss = lambda v, a: (fn(v, a) ** 2).sum()
        with jax.default_matmul_precision("highest"):
            return jax.jit(lambda v, a: (fn(v, a), jax.grad(loss, (0, 1))(v, a)))(variables, x)

    got, got_grads = output_and_grads(lambda v, a: ours.apply(v, a, form))
    want, want_grads = output_and_grads(conv.apply)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_taps_take_one_input_channel_and_forms_are_named():
    x = jnp.ones((1, 9, 9, 2))
    variables = StridedConv3x3(4).init(jax.random.PRNGKey(0), x)
    for form in ("taps", "matmul"):
        with pytest.raises(ValueError, match="form"):
            StridedConv3x3(4).apply(variables, x, form)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_subsampling_lengths_and_padding(padding):
    # rows of 29, 22 and 17 real frames: each must equal its utterance run alone, unpadded
    sub = ConvSubsampling(4, 8, padding=padding, flatten="channel_freq")
    x = np.random.default_rng(0).standard_normal((3, 29, 10)).astype(np.float32)
    lengths = np.array([29, 22, 17])
    mask = np.arange(29)[None] < lengths[:, None]
    x[~mask] = 1e3  # padding junk
    variables = sub.init(jax.random.PRNGKey(0), x, mask)
    with jax.default_matmul_precision("highest"):
        y, out_mask = sub.apply(variables, x, mask)
        want_len = -(-lengths // 4) if padding == "same" else ((lengths - 1) // 2 - 1) // 2
        np.testing.assert_array_equal(out_mask.sum(-1), want_len)
        assert y.shape[1] == want_len[0]
        for row, n in enumerate(lengths):
            alone, _ = sub.apply(variables, x[row:row + 1, :n], mask[row:row + 1, :n])
            np.testing.assert_allclose(y[row, :want_len[row]], alone[0], rtol=1e-5, atol=1e-5)
