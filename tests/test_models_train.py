"""Jit-compiled training and inference of every light backbone on 10 s utterances."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from models_testutil import FRAMES, NUM_CLASSES, compiled, inputs, random_variables

from hrf_jax import hrf_paths
from hrf_jax.models import BACKBONES


def _train_step(model):
    """Jitted (loss, logits, grads, new batch_stats) of one train-mode step with dropout."""

    def loss_fn(params, other, feats, mask, labels, key):
        logits, updates = model.apply(
            {"params": params, **other}, feats, mask, train=True,
            rngs={"dropout": key}, mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, updates)

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_train_step_reaches_every_hrf_layer_and_uses_dropout_rng(backbone):
    # 1000 frames (10 s): shorter utterances run the same program at a smaller size
    model, _ = compiled(backbone, "light", 4, "all")
    feats, mask = inputs(2, 1000)
    variables = random_variables(model, feats, mask)
    params = variables["params"]
    other = {k: v for k, v in variables.items() if k != "params"}
    labels = jnp.array([1, 3])
    step = _train_step(model)
    (loss, (logits_a, updates)), grads = step(
        params, other, feats, mask, labels, jax.random.PRNGKey(1)
    )
    (_, (logits_b, _)), _ = step(params, other, feats, mask, labels, jax.random.PRNGKey(2))
    assert np.isfinite(float(loss)) and logits_a.shape == (2, NUM_CLASSES)
    assert not np.allclose(logits_a, logits_b)  # different dropout keys, different outputs
    hosts = hrf_paths({"params": grads})
    assert hosts, "the HRF model has no HRF layers"
    for path in hosts:
        node = grads
        for key in path.split("/")[1:]:
            node = node[key]
        assert float(jnp.abs(node["hrf_0"]["kernel"]).max()) > 0, path
    for leaf in jax.tree_util.tree_leaves(grads):
        assert np.all(np.isfinite(leaf))
    if backbone == "conformer":
        moved = jax.tree_util.tree_map(
            lambda a, b: bool(jnp.any(a != b)), updates["batch_stats"], other["batch_stats"]
        )
        assert all(jax.tree_util.tree_leaves(moved))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_eval_is_deterministic_and_ignores_dropout_rng(backbone):
    model, fn = compiled(backbone, "light", 4, "all")
    feats, mask = inputs(2, FRAMES["light"])
    variables = random_variables(model, feats, mask)
    a = fn(variables, feats, mask, jax.random.PRNGKey(1))
    b = fn(variables, feats, mask, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
