"""Property-based tests of the HRF tree transforms on a single HRFDense layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hrf_jax import HRFDense, count_params, expand_hrf, hrf_paths, merge_hrf

SETTINGS = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
REL_TOL = 1e-5
WORST = {"rel": 0.0}  # worst relative merge error seen, printed at session end


def randomise(tree, seed):
    """Replaces every leaf with random values (init biases are zero and would hide bugs)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    new = [
        (jax.random.normal(k, x.shape, jnp.float32) * 0.5).astype(x.dtype)
        for k, x in zip(keys, leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, new)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-12))


layer_cases = st.fixed_dictionaries(
    {
        "d_in": st.integers(1, 24),
        "d_out": st.integers(1, 24),
        "ratio": st.integers(1, 8),
        "depth": st.sampled_from([1, 2]),
        "use_bias": st.booleans(),
        "hrf_bias": st.booleans(),
        "lead": st.lists(st.integers(1, 3), min_size=1, max_size=3),
        "seed": st.integers(0, 2**16),
    }
)


def build(case):
    hrf = HRFDense(
        case["d_out"],
        use_bias=case["use_bias"],
        hrf_ratio=case["ratio"],
        hrf_depth=case["depth"],
        hrf_bias=case["hrf_bias"],
    )
    plain = HRFDense(case["d_out"], use_bias=case["use_bias"])
    x = jax.random.normal(jax.random.PRNGKey(case["seed"]), (*case["lead"], case["d_in"]))
    variables = randomise(hrf.init(jax.random.PRNGKey(1), x), case["seed"] + 1)
    return hrf, plain, x, variables


@SETTINGS
@given(layer_cases)
def test_merged_output_equals_hrf_output(case):
    hrf, plain, x, variables = build(case)
    with jax.default_matmul_precision("highest"):
        err = rel_err(hrf.apply(variables, x), plain.apply(merge_hrf(variables), x))
    WORST["rel"] = max(WORST["rel"], err)
    assert err <= REL_TOL


@SETTINGS
@given(layer_cases)
def test_merged_tree_has_plain_structure_and_count(case):
    hrf, plain, x, variables = build(case)
    merged = merge_hrf(variables)
    plain_vars = plain.init(jax.random.PRNGKey(0), x)
    shapes = lambda t: jax.tree_util.tree_map(jnp.shape, t)
    assert shapes(merged) == shapes(plain_vars)
    assert count_params(merged) == count_params(plain_vars)
    assert hrf_paths(merged) == []
    assert hrf_paths(variables) == ["params"]


@SETTINGS
@given(layer_cases)
def test_merge_is_idempotent_and_pure(case):
    _, _, _, variables = build(case)
    before = jax.tree_util.tree_map(np.array, variables)
    merged = merge_hrf(variables)
    again = merge_hrf(merged)
    assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(merged)
    for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(merged),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the input tree is untouched, structure and values
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(before)
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(before),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)


@SETTINGS
@given(layer_cases)
def test_expand_then_merge_round_trips(case):
    _, plain, x, _ = build(case)
    plain_vars = randomise(plain.init(jax.random.PRNGKey(0), x), case["seed"])
    expanded = expand_hrf(
        plain_vars, jax.random.PRNGKey(case["seed"]), case["ratio"], case["depth"],
        pattern="^params$", bias=case["hrf_bias"],
    )
    hrf = HRFDense(case["d_out"], use_bias=case["use_bias"], hrf_ratio=case["ratio"],
                   hrf_depth=case["depth"], hrf_bias=case["hrf_bias"])
    with jax.default_matmul_precision("highest"):
        # the expanded tree loads into the HRF model and computes the same function
        err_fn = rel_err(plain.apply(plain_vars, x), hrf.apply(expanded, x))
        back = merge_hrf(expanded)
    assert err_fn <= REL_TOL
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(plain_vars),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@SETTINGS
@given(layer_cases)
def test_merge_under_jit_matches_eager(case):
    _, _, _, variables = build(case)
    with jax.default_matmul_precision("highest"):
        eager = merge_hrf(variables)
        jitted = jax.jit(merge_hrf)(variables)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@SETTINGS
@given(layer_cases)
def test_merge_on_host_numpy_matches_jax(case):
    _, _, _, variables = build(case)
    host = jax.tree_util.tree_map(np.asarray, variables)
    merged_host = merge_hrf(host)
    with jax.default_matmul_precision("highest"):
        merged_jax = merge_hrf(variables)
    for a, b in zip(jax.tree_util.tree_leaves(merged_host),
                    jax.tree_util.tree_leaves(merged_jax), strict=True):
        assert isinstance(a, np.ndarray)
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@SETTINGS
@given(case=layer_cases)
def test_low_precision_merge_folds_in_float32(dtype, case):
    """bf16/fp16 trees: the fold equals the float32 fold rounded once to the dtype."""
    _, _, _, variables = build(case)
    low = jax.tree_util.tree_map(lambda a: a.astype(dtype), variables)
    merged = merge_hrf(low)
    reference = merge_hrf(jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), low))
    for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(reference),
                    strict=True):
        assert a.dtype == dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(dtype)))


def teardown_module(module):
    print(f"\nworst relative merge error in property tests: {WORST['rel']:.3e}")
