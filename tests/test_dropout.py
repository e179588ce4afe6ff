"""The 16-bit-threshold Dropout: drop rate, scaling, determinism and rng use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrf_jax.layers import Dropout


def _apply(rate, x, seed=0, deterministic=False):
    return Dropout(rate).apply({}, x, deterministic=deterministic,
                               rngs={"dropout": jax.random.PRNGKey(seed)})


@pytest.mark.parametrize("rate,channels", [(0.1, 128), (0.5, 63), (0.3, 1)])
def test_drop_fraction_and_scale(rate, channels):
    x = jnp.ones((400, channels))
    y = np.asarray(_apply(rate, x))
    dropped = np.mean(y == 0)
    n = y.size
    assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / n)  # 5 sigma
    np.testing.assert_allclose(y[y != 0], 1 / (1 - rate), rtol=1e-6)
    assert abs(y.mean() - 1) < 5 * np.sqrt(rate / (1 - rate) / n)  # unbiased in expectation


def test_both_halves_of_each_draw_are_used_independently():
    # elements c and c + C/2 share one 32-bit draw: their drop decisions must not agree
    # more often than independent draws would
    y = np.asarray(_apply(0.5, jnp.ones((2000, 64)))) == 0
    agree = np.mean(y[:, :32] == y[:, 32:])
    assert abs(agree - 0.5) < 5 * np.sqrt(0.25 / y[:, :32].size)


def test_deterministic_and_zero_rate_are_identity_and_masks_follow_the_rng():
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 10, 8))
    np.testing.assert_array_equal(_apply(0.3, x, deterministic=True), x)
    np.testing.assert_array_equal(_apply(0.0, x), x)
    np.testing.assert_array_equal(_apply(0.3, x, seed=1), _apply(0.3, x, seed=1))
    assert not np.array_equal(_apply(0.3, x, seed=1), _apply(0.3, x, seed=2))


def test_bad_rate_is_refused():
    with pytest.raises(ValueError, match="dropout rate"):
        _apply(1.0, jnp.ones((2, 2)))
