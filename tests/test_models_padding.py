"""Padding never changes a prediction: appended masked frames leave the logits unchanged."""

import jax
import jax.numpy as jnp
import pytest
from models_testutil import BACKBONES, NUM_CLASSES, eval_fn, inputs, random_variables, rel_err

from hrf_jax import build_model
from hrf_jax.models import supported_targets


@pytest.mark.parametrize("ratio", [0, 4])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_appended_padding_leaves_logits_unchanged(backbone, ratio):
    targets = supported_targets(backbone) if ratio else ("ffn",)
    model = build_model(backbone, num_classes=NUM_CLASSES, hrf_ratio=ratio, hrf_targets=targets)
    feats, mask = inputs(2, 45, lengths=[45, 31])
    variables = random_variables(model, feats, mask)
    junk = 1e3 * jax.random.normal(jax.random.PRNGKey(5), (2, 23, feats.shape[-1]))
    padded = jnp.concatenate([feats, junk], axis=1)
    padded_mask = jnp.pad(mask, [(0, 0), (0, 23)])
    # frames 31..44 of row 1 were padding already: scramble them too
    padded = padded.at[1, 31:45].set(-7e2)
    fn = eval_fn(model)
    assert rel_err(fn(variables, feats, mask), fn(variables, padded, padded_mask)) <= 1e-5
