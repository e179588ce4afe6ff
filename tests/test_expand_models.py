"""expand_hrf on every backbone: the expanded tree loads into the HRF model, computes the
plain model's function, and merges back to the plain tree."""

import jax
import numpy as np
import pytest

from hrf_jax import build_model, count_params, expand_hrf, merge_hrf


@pytest.mark.parametrize("backbone", ["conformer", "speechformer", "convtransformer"])
def test_expand_preserves_function_and_loads_into_hrf_model(backbone):
    plain = build_model(backbone, "light", num_classes=4)
    hrf = build_model(backbone, "light", num_classes=4, hrf_ratio=4)
    feats = np.random.default_rng(0).standard_normal((2, 120, 128)).astype(np.float32)
    mask = np.arange(120)[None] < np.array([[120], [77]])
    plain_vars = plain.init(jax.random.PRNGKey(0), feats, mask)
    expanded = expand_hrf(plain_vars, jax.random.PRNGKey(1), 4)
    shapes = lambda t: jax.tree_util.tree_map(np.shape, t)
    assert shapes(expanded) == shapes(hrf.init(jax.random.PRNGKey(2), feats, mask))
    with jax.default_matmul_precision("highest"):
        want = np.asarray(plain.apply(plain_vars, feats, mask))
        got = np.asarray(hrf.apply(expanded, feats, mask))
    assert np.max(np.abs(want - got)) <= 1e-5 * max(np.max(np.abs(want)), 1.0)
    merged = merge_hrf(expanded)
    assert count_params(merged) == count_params(plain_vars)
    for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(plain_vars),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
