"""``hrf_jax.random_bits``: the threefry bits written out for fusion are ``jax.random.bits``'s,
bit for bit, and other key implementations fall back to JAX itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrf_jax import random_bits
from hrf_jax.layers import Dropout

KEYS = {"raw": lambda: jax.random.PRNGKey(0), "raw_folded": lambda: jax.random.fold_in(
    jax.random.PRNGKey(11), 7), "typed": lambda: jax.random.key(123)}


@pytest.mark.parametrize("key", sorted(KEYS))
@pytest.mark.parametrize("shape", [(1,), (3,), (2, 5), (4, 7, 33), (32, 39, 24), (5, 1, 3)])
def test_bits_are_jax_random_bits(key, shape):
    k = KEYS[key]()
    ours = jax.jit(random_bits.bits, static_argnums=1)(k, shape)
    assert ours.dtype == jnp.uint32 and ours.shape == shape
    np.testing.assert_array_equal(ours, jax.random.bits(k, shape))


def test_bits_at_reads_the_flat_draw():
    key, shape = jax.random.PRNGKey(5), (6, 10)
    index = jnp.asarray([[0, 59], [17, 3]], jnp.uint32)
    np.testing.assert_array_equal(random_bits.bits_at(key, index),
                                  jax.random.bits(key, shape).ravel()[index])


def test_other_key_implementations_fall_back_to_jax():
    key = jax.random.key(0, impl="rbg")
    assert random_bits._threefry_key_data(key) is None
    np.testing.assert_array_equal(random_bits.bits(key, (4, 9)), jax.random.bits(key, (4, 9)))


def test_dropout_draws_its_bits_as_plain_arithmetic():
    # JAX's random_bits lowers on CPU to a loop of materialised rounds; the layer's only key
    # operation left is flax deriving its key (fold_in, on two words)
    def apply(x, key):
        return Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": key})

    jaxpr = str(jax.make_jaxpr(apply)(jnp.ones((8, 16, 32)), jax.random.PRNGKey(0)))
    assert "random_fold_in" in jaxpr and "random_bits[" not in jaxpr
