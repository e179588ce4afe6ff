"""expand_hrf on every backbone: the expanded tree loads into the HRF model, computes the
plain model's function, and merges back to the plain tree."""

import re

import jax
import numpy as np
import pytest
from models_testutil import (
    FRAMES,
    compiled,
    inputs,
    random_variables,
    rel_err,
    shapes,
    variable_shapes,
)

from hrf_jax import count_params, expand_hrf, hrf_paths, merge_hrf
from hrf_jax.models import BACKBONES


@pytest.mark.parametrize("backbone", BACKBONES)
def test_expand_preserves_function_and_loads_into_hrf_model(backbone):
    plain, plain_fn = compiled(backbone, "light")
    hrf, hrf_fn = compiled(backbone, "light", 4, "all")
    feats, mask = inputs(2, FRAMES["light"])
    plain_vars = random_variables(plain, feats, mask)
    # expand exactly the layers that carry a chain in the all-targets HRF model
    hrf_shapes = variable_shapes(hrf, feats, mask)
    pattern = "^(" + "|".join(re.escape(p) for p in hrf_paths(hrf_shapes)) + ")$"
    expanded = expand_hrf(plain_vars, jax.random.PRNGKey(1), 4, pattern=pattern)
    assert shapes(expanded) == shapes(hrf_shapes)
    with jax.default_matmul_precision("highest"):
        want, got = plain_fn(plain_vars, feats, mask), hrf_fn(expanded, feats, mask)
    assert rel_err(want, got) <= 1e-5
    merged = merge_hrf(expanded)
    assert count_params(merged) == count_params(plain_vars)
    for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(plain_vars),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_default_expansion_fits_the_default_hrf_model(backbone):
    plain, _ = compiled(backbone, "light")
    hrf, _ = compiled(backbone, "light", 4)
    feats, mask = inputs(1, 32)
    expanded = expand_hrf(random_variables(plain, feats, mask), jax.random.PRNGKey(1), 4)
    assert shapes(expanded) == shapes(variable_shapes(hrf, feats, mask))
