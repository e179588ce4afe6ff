"""deHRF and BatchNorm folding are exact on every backbone, with randomised variables."""

import functools

import jax
import numpy as np
import pytest
from models_testutil import BACKBONES, NUM_CLASSES, eval_fn, inputs, random_variables, rel_err
from models_testutil import shapes as tree_shapes

from hrf_jax import build_model, count_params, fold_batchnorm, hrf_paths, merge_hrf
from hrf_jax.models import supported_targets

TOL = 1e-5
# light: every ratio at T=96; large: ratio 4 only at T=64 (16-layer Conformer-S compiles slowly)
CASES = [("light", r, 96) for r in (2, 4, 8)] + [("large", 4, 64)]


@functools.cache
def _plain(backbone: str, size: str, **kw):
    """Plain model and its jitted forward, shared by all ratios (one compile per config)."""
    model = build_model(backbone, size, num_classes=NUM_CLASSES, **kw)
    return model, eval_fn(model)


@pytest.mark.parametrize("targets", ["default", "all"])
@pytest.mark.parametrize("size,ratio,frames", CASES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_merge_hrf_matches_plain_model(backbone, size, ratio, frames, targets):
    hrf_targets = ("ffn",) if targets == "default" else supported_targets(backbone)
    hrf = build_model(
        backbone, size, num_classes=NUM_CLASSES, hrf_ratio=ratio, hrf_targets=hrf_targets
    )
    plain, plain_fn = _plain(backbone, size)
    feats, mask = inputs(2, frames)
    variables = random_variables(hrf, feats, mask)
    with jax.default_matmul_precision("highest"):
        merged = merge_hrf(variables)
        y_hrf = eval_fn(hrf)(variables, feats, mask)
        y_plain = plain_fn(merged, feats, mask)
    assert rel_err(y_hrf, y_plain) <= TOL
    plain_vars = jax.eval_shape(plain.init, jax.random.PRNGKey(0), feats, mask)
    assert tree_shapes(merged) == tree_shapes(plain_vars)
    assert count_params(merged["params"]) == count_params(plain_vars["params"])
    assert hrf_paths(merged) == []


def test_all_targets_put_chains_on_every_target_kind():
    model = build_model(
        "conformer", num_classes=4, hrf_ratio=2, hrf_targets=supported_targets("conformer")
    )
    feats, mask = inputs(1, 32)
    paths = hrf_paths(jax.eval_shape(model.init, jax.random.PRNGKey(0), feats, mask))
    block = [p.split("/", 2)[2] for p in paths if p.startswith("params/block_0/")]
    assert sorted(block) == sorted([
        "ffn1/fc1", "ffn1/fc2", "ffn2/fc1", "ffn2/fc2",
        "attn/query", "attn/key", "attn/value", "attn/out",
        "conv/pointwise_1", "conv/pointwise_2",
    ])
    assert "params/classifier" in paths


@pytest.mark.parametrize("size,frames", [("light", 96), ("large", 64)])
def test_fold_batchnorm_matches_folded_model(size, frames):
    bn_model, bn_fn = _plain("conformer", size)
    folded_model, folded_fn = _plain("conformer", size, fold_bn=True)
    feats, mask = inputs(2, frames)
    variables = random_variables(bn_model, feats, mask)
    folded = fold_batchnorm(variables)
    with jax.default_matmul_precision("highest"):
        assert rel_err(bn_fn(variables, feats, mask), folded_fn(folded, feats, mask)) <= TOL
    target = jax.eval_shape(folded_model.init, jax.random.PRNGKey(0), feats, mask)
    assert "batch_stats" not in target and "batch_stats" not in folded
    assert tree_shapes(folded) == tree_shapes(target)


def test_deploy_pipeline_merge_then_fold_is_exact():
    hrf = build_model(
        "conformer", num_classes=4, hrf_ratio=4, hrf_targets=supported_targets("conformer")
    )
    _, deploy_fn = _plain("conformer", "light", fold_bn=True)
    feats, mask = inputs(2, 96)
    variables = random_variables(hrf, feats, mask, seed=7)
    with jax.default_matmul_precision("highest"):
        y_hrf = eval_fn(hrf)(variables, feats, mask)
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
    with pytest.raises(ValueError, match="blk/conv/batch_norm/scale"):
        fold_batchnorm(tree)
