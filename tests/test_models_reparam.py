"""deHRF and BatchNorm folding are exact on every backbone, with randomised variables."""

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

from hrf_jax import count_params, fold_batchnorm, hrf_paths, merge_hrf
from hrf_jax.models import BACKBONES

TOL = 1e-5


@pytest.mark.parametrize("size", ["light", "large"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_merge_hrf_matches_plain_model(backbone, size):
    """Every target kind carries a chain (ratio 4); the fold runs on host numpy (float64)."""
    hrf, hrf_fn = compiled(backbone, size, 4, "all")
    plain, plain_fn = compiled(backbone, size)
    feats, mask = inputs(2, FRAMES[size])
    variables = random_variables(hrf, feats, mask)
    with jax.default_matmul_precision("highest"):
        merged = merge_hrf(variables)
        y_hrf = hrf_fn(variables, feats, mask)
        y_plain = plain_fn(merged, feats, mask)
    assert rel_err(y_hrf, y_plain) <= TOL
    plain_vars = variable_shapes(plain, feats, mask)
    assert shapes(merged) == shapes(plain_vars)
    assert count_params(merged["params"]) == count_params(plain_vars["params"])
    assert hrf_paths(merged) == []


@pytest.mark.parametrize("backbone", BACKBONES)
def test_merge_hrf_is_exact_on_the_reference_presets(backbone):
    """The reference presets (their norms' epsilons, PE table, edges, padding) merge alike."""
    hrf, hrf_fn = compiled(backbone, "light", 4, "all", reference=True)
    plain, plain_fn = compiled(backbone, "light", reference=True)
    feats, mask = inputs(2, FRAMES["light"])
    variables = random_variables(hrf, feats, mask)
    with jax.default_matmul_precision("highest"):
        merged = merge_hrf(variables)
        assert rel_err(hrf_fn(variables, feats, mask), plain_fn(merged, feats, mask)) <= TOL
    assert shapes(merged) == shapes(variable_shapes(plain, feats, mask))


@pytest.mark.parametrize("ratio,depth", [(8, 1), (2, 2)])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_merged_tree_of_any_ratio_and_depth_is_the_plain_tree(backbone, ratio, depth):
    # the fold itself is checked over ratios and depths in test_reparam_properties; here the
    # model's chains (default target) must merge into exactly the plain model's tree
    hrf, _ = compiled(backbone, "light", ratio, hrf_depth=depth)
    plain, _ = compiled(backbone, "light")
    feats, mask = inputs(1, 32)
    variables = random_variables(hrf, feats, mask)
    assert hrf_paths(variables)
    merged = merge_hrf(variables)
    plain_vars = variable_shapes(plain, feats, mask)
    assert shapes(merged) == shapes(plain_vars)
    assert count_params(merged) == count_params(plain_vars)


def test_all_targets_put_chains_on_every_target_kind():
    model, _ = compiled("conformer", "light", 4, "all")
    feats, mask = inputs(1, 32)
    paths = hrf_paths(variable_shapes(model, feats, mask))
    block = [p.split("/", 2)[2] for p in paths if p.startswith("params/block_0/")]
    assert sorted(block) == sorted([
        "ffn1/fc1", "ffn1/fc2", "ffn2/fc1", "ffn2/fc2",
        "attn/query", "attn/key", "attn/value", "attn/out",
        "conv/pointwise_1", "conv/pointwise_2",
    ])
    assert "params/classifier" in paths


@pytest.mark.parametrize("size", ["light", "large"])
def test_fold_batchnorm_matches_folded_model(size):
    bn_model, bn_fn = compiled("conformer", size)
    folded_model, folded_fn = compiled("conformer", size, fold_bn=True)
    feats, mask = inputs(2, FRAMES[size])
    variables = random_variables(bn_model, feats, mask)
    folded = fold_batchnorm(variables)
    with jax.default_matmul_precision("highest"):
        assert rel_err(bn_fn(variables, feats, mask), folded_fn(folded, feats, mask)) <= TOL
    target = variable_shapes(folded_model, feats, mask)
    assert "batch_stats" not in target and "batch_stats" not in folded
    assert shapes(folded) == shapes(target)
    # jax arrays fold in float32 to the same tree
    on_device = fold_batchnorm(jax.device_put(variables))
    for a, b in zip(jax.tree_util.tree_leaves(on_device), jax.tree_util.tree_leaves(folded),
                    strict=True):
        assert isinstance(a, jax.Array)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_deploy_pipeline_merge_then_fold_is_exact():
    hrf, hrf_fn = compiled("conformer", "light", 4, "all")
    _, deploy_fn = compiled("conformer", "light", fold_bn=True)
    feats, mask = inputs(2, FRAMES["light"])
    variables = random_variables(hrf, feats, mask, seed=7)
    with jax.default_matmul_precision("highest"):
        y_hrf = hrf_fn(variables, feats, mask)
        y_deploy = deploy_fn(fold_batchnorm(merge_hrf(variables)), feats, mask)
    assert rel_err(y_hrf, y_deploy) <= TOL


def _bn_tree():
    conv = {"kernel": np.full((3, 1, 2), 2.0), "bias": np.array([1.0, -1.0])}
    bn = {"scale": np.array([2.0, 0.5]), "bias": np.array([0.1, 0.2])}
    stats = {"mean": np.array([1.0, 3.0]), "var": np.array([3.0, 0.0])}
    return {
        "params": {"blk": {"conv": {"depthwise": conv, "batch_norm": bn}}},
        "batch_stats": {"blk": {"conv": {"batch_norm": stats}}},
    }


def test_fold_batchnorm_formula_is_pure_and_idempotent():
    tree = _bn_tree()
    folded = fold_batchnorm(tree, eps=1.0)
    s = np.array([2.0 / 2.0, 0.5 / 1.0])  # scale / sqrt(var + eps)
    out = folded["params"]["blk"]["conv"]["depthwise"]
    np.testing.assert_allclose(out["kernel"], 2.0 * s * np.ones((3, 1, 2)))
    np.testing.assert_allclose(out["bias"], (np.array([1.0, -1.0]) - [1.0, 3.0]) * s + [0.1, 0.2])
    assert "batch_norm" in tree["params"]["blk"]["conv"]  # input untouched
    assert fold_batchnorm(folded) == folded


def test_fold_batchnorm_names_the_missing_statistics():
    tree = _bn_tree()
    del tree["batch_stats"]["blk"]["conv"]
    with pytest.raises(ValueError, match="batch_stats/blk/conv"):
        fold_batchnorm(tree)


def test_fold_batchnorm_names_a_shape_mismatch():
    tree = _bn_tree()
    tree["params"]["blk"]["conv"]["batch_norm"]["scale"] = np.ones(3)
    with pytest.raises(ValueError, match="params/blk/conv/batch_norm/scale"):
        fold_batchnorm(tree)
