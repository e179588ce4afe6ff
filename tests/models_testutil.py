"""Helpers shared by the test_models_* files: random variables, inputs, comparisons."""

import jax
import jax.numpy as jnp
import numpy as np

FEAT_DIM = 128
NUM_CLASSES = 4
BACKBONES = ("conformer", "speechformer", "convtransformer")


def inputs(batch: int, frames: int, seed: int = 0, lengths=None):
    """Random ``feats (B, T, 128)`` and a prefix ``mask``; row 1 is shorter by default."""
    feats = jax.random.normal(jax.random.PRNGKey(seed), (batch, frames, FEAT_DIM))
    if lengths is None:
        lengths = [frames] + [max(frames * 3 // 4, 8)] * (batch - 1)
    mask = jnp.arange(frames)[None, :] < jnp.asarray(lengths)[:, None]
    return feats, mask


def random_variables(model, feats, mask, seed: int = 1):
    """Every parameter and BatchNorm statistic drawn at random (no init values left).

    Kernels ~ N(0, 1/fan_in) so deep stacks stay in range; LayerNorm/BatchNorm scales
    1 + 0.2 N; biases, relative-position biases and BN means 0.2-0.5 N; BN vars U(0.5, 2).
    """
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), feats, mask)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    out = []
    for (path, leaf), key in zip(leaves, keys, strict=True):
        name = path[-1].key
        z = jax.random.normal(key, leaf.shape, jnp.float32)
        if name == "kernel":
            out.append(z / np.sqrt(np.prod(leaf.shape[:-1])))
        elif name == "scale":
            out.append(1.0 + 0.2 * z)
        elif name == "var":
            out.append(jax.random.uniform(key, leaf.shape, jnp.float32, 0.5, 2.0))
        elif name == "mean":
            out.append(0.5 * z)
        else:
            out.append(0.2 * z)
    return jax.tree_util.tree_unflatten(treedef, out)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))


def shapes(tree):
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), dict(tree))


def eval_fn(model):
    """A jitted eval-mode forward of ``model``."""
    return jax.jit(lambda v, x, m: model.apply(v, x, m, train=False))
