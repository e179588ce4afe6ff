"""Helpers shared by the model tests: inputs, random variables, and models built and compiled
once per session (the test files share them, so each program compiles once).

Random values come from numpy: drawing every leaf with ``jax.random`` compiled one program
per leaf shape, which cost more than compiling the models themselves.
"""

import functools

import jax
import numpy as np

from hrf_jax.models import build_model, supported_targets

FEAT_DIM = 128
NUM_CLASSES = 4
FRAMES = {"light": 96, "large": 64}
# the large sizes' widths with two layers (one per SpeechFormer stage): every large shape at
# a light model's compile time
LARGE_DEPTH = {"conformer": {"num_layers": 2}, "convtransformer": {"num_layers": 2},
               "speechformer": {"num_layers": (1, 1, 1, 1)}}
DROPOUT_KEY = jax.random.PRNGKey(0)

def inputs(batch: int, frames: int, seed: int = 0, lengths=None):
    """Random ``feats (B, T, 128)`` float32 and a prefix ``mask``; row 1 is shorter by default."""
    feats = np.random.default_rng(seed).standard_normal((batch, frames, FEAT_DIM))
    if lengths is None:
        lengths = [frames] + [max(frames * 3 // 4, 8)] * (batch - 1)
    mask = np.arange(frames)[None, :] < np.asarray(lengths)[:, None]
    return feats.astype(np.float32), mask


@functools.cache
def compiled(backbone: str, size: str = "light", ratio: float = 0, targets: str = "ffn",
             **overrides):
    """``(model, fn)``: ``build_model`` (``targets="all"``: every target of the backbone;
    ``size="large"``: two layers deep) and its jitted eval forward ``fn(vars, feats, mask[, key])``.
    """
    if size == "large":
        overrides = {**LARGE_DEPTH[backbone], **overrides}
    hrf_targets = supported_targets(backbone) if targets == "all" else (targets,)
    model = build_model(backbone, size, num_classes=NUM_CLASSES, hrf_ratio=ratio,
                        hrf_targets=hrf_targets, **overrides)
    # with a dropout key that train=False must ignore (test_models_train checks it)
    jitted = jax.jit(lambda v, x, m, key: model.apply(v, x, m, train=False,
                                                      rngs={"dropout": key}))
    return model, lambda v, x, m, key=DROPOUT_KEY: jitted(v, x, m, key)


def variable_shapes(model, feats, mask):
    """``model``'s variables as ``jax.ShapeDtypeStruct`` (traced, not compiled)."""
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), feats, mask)


def random_variables(model, feats, mask, seed: int = 1):
    """Every parameter and BatchNorm statistic drawn at random (no init values left), numpy.

    Kernels ~ N(0, 1/fan_in) so deep stacks stay in range; LayerNorm/BatchNorm scales
    1 + 0.2 N; biases, relative-position biases and BN means 0.2-0.5 N; BN vars U(0.5, 2).
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, z = path[-1].key, rng.standard_normal(leaf.shape)
        if name == "kernel":
            value = z / np.sqrt(np.prod(leaf.shape[:-1]))
        elif name == "scale":
            value = 1.0 + 0.2 * z
        elif name == "var":
            value = rng.uniform(0.5, 2.0, leaf.shape)
        elif name == "mean":
            value = 0.5 * z
        else:
            value = 0.2 * z
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, variable_shapes(model, feats, mask))


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))


def shapes(tree):
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), dict(tree))
