"""``jax.random.bits`` for threefry keys, written as plain integer arithmetic.

On CPU JAX lowers its threefry hash as a loop of five iterations (to keep compile times
short), so every draw is a while loop of a dozen small ops that materialises the bits before
anything reads them. A dropout mask needs nothing but a hash of each element's index, and the
same hash written out lets XLA fuse it with the mask's arithmetic: in a profile of the
Conformer light train step at T=300 the loops took about 3.5 ms per block, the fused hash about
half of that (BENCHMARKS.md: 0-5 % of a light step). ``bits`` returns exactly
``jax.random.bits(key, shape)`` (the threefry-2x32 hash of the element's flat index, as JAX's
partitionable threefry draws it); for any other key implementation or setting it calls
``jax.random.bits`` itself.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Threefry-2x32 with 20 rounds (Salmon et al., SC 2011): the rotations of the four-round groups
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: Array, r: int) -> Array:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k1: Array, k2: Array, x1: Array, x2: Array) -> tuple[Array, Array]:
    """The Threefry-2x32 hash of the counter pairs ``(x1, x2)`` under key ``(k1, k2)``,
    all ``uint32``, unrolled (the same function as JAX's ``threefry2x32`` primitive)."""
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x = [x1 + ks[0], x2 + ks[1]]
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x[0] = x[0] + x[1]
            x[1] = _rotate_left(x[1], r) ^ x[0]
        x[0] = x[0] + ks[(group + 1) % 3]
        x[1] = x[1] + ks[(group + 2) % 3] + np.uint32(group + 1)
    return x[0], x[1]


def _threefry_key_data(key: Array) -> Array | None:
    """The ``uint32[2]`` data of a threefry key (typed or raw), else None."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if "threefry" not in str(jax.random.key_impl(key)):
            return None
        return jax.random.key_data(key)
    if key.dtype != jnp.uint32 or key.shape != (2,):
        return None
    return key if jax.config.jax_default_prng_impl == "threefry2x32" else None


def bits(key: Array, shape: tuple[int, ...]) -> Array:
    """``uint32`` random bits of ``shape``, equal to ``jax.random.bits(key, shape)``."""
    data = _threefry_key_data(key)
    if (data is None or not jax.config.jax_threefry_partitionable
            or math.prod(shape) >= 2**32):
        return jax.random.bits(key, shape)
    index = jnp.zeros(shape, jnp.uint32)
    for axis, stride in enumerate(np.cumprod((shape + (1,))[:0:-1])[::-1]):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
    return bits_at(data, index)


def bits_at(data: Array, index: Array) -> Array:
    """Element ``n`` of the bits a threefry key with ``uint32[2]`` ``data`` draws, for each flat
    index ``n`` in ``index`` (``uint32``): ``bits(key, shape).ravel()[index]``."""
    # the flat index as a 64-bit counter (high word 0 below 2**32 elements)
    hi, lo = threefry2x32(data[0], data[1], jnp.zeros_like(index), index)
    return hi ^ lo
