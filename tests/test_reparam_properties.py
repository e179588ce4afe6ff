"""Property-based tests of the HRF tree transforms on a single HRFDense layer.

Hypothesis draws layer shapes and runs the transforms on host numpy trees (no XLA program
per example); the model forward, jax arrays, jit and low precision run on a few fixed shapes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hrf_jax import HRFDense, count_params, expand_hrf, hrf_paths, merge_hrf
from hrf_jax.masking import BN_EPSILON
from hrf_jax.reparam import orthogonal_expansion

SETTINGS = settings(max_examples=40, deadline=None)
REL_TOL = 1e-5
WORST = {"rel": 0.0}  # worst relative merge error seen, printed at module end

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
FIXED_CASES = [
    {"d_in": 5, "d_out": 7, "ratio": 2, "depth": 1, "use_bias": True, "hrf_bias": True,
     "lead": [2, 3], "seed": 0},
    {"d_in": 3, "d_out": 1, "ratio": 3, "depth": 2, "use_bias": False, "hrf_bias": True,
     "lead": [4], "seed": 1},
    {"d_in": 8, "d_out": 4, "ratio": 1, "depth": 2, "use_bias": True, "hrf_bias": False,
     "lead": [1, 2, 3], "seed": 2},
]


def models(case):
    """The HRF layer of ``case`` and its plain counterpart."""
    hrf = HRFDense(case["d_out"], use_bias=case["use_bias"], hrf_ratio=case["ratio"],
                   hrf_depth=case["depth"], hrf_bias=case["hrf_bias"])
    return hrf, HRFDense(case["d_out"], use_bias=case["use_bias"])


def shapes(tree):
    return jax.tree_util.tree_map(np.shape, tree)


def random_tree(model, x, seed):
    """Host numpy variables of ``model`` with every leaf random (zero init biases hide bugs)."""
    rng = np.random.default_rng(seed)
    structure = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)  # traced, not compiled
    return jax.tree_util.tree_map(
        lambda s: (0.5 * rng.standard_normal(s.shape)).astype(np.float32), structure
    )


def build(case):
    hrf, plain = models(case)
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((*case["lead"], case["d_in"])).astype(np.float32)
    return hrf, plain, x, random_tree(hrf, x, case["seed"] + 1)


def chain_forward(variables, x):
    """The HRF layer's definition in float64: ``hrf_0``, ``hrf_1``, .. then the host."""
    node = variables["params"]
    depth = sum(key.startswith("hrf_") for key in node)
    y = np.asarray(x, np.float64)
    for layer in [*(node[f"hrf_{i}"] for i in range(depth)), node]:
        y = y @ np.asarray(layer["kernel"], np.float64)
        if "bias" in layer:
            y = y + np.asarray(layer["bias"], np.float64)
    return y


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-12))


def merge_err(forward, variables, x, y):
    """``rel_err`` of ``y`` against ``forward(variables, x)``, but relative to at least a
    hundredth of the size of the terms summed (``forward`` with every input and parameter at
    its absolute value, BatchNorm means adding): float32 rounding grows with the terms, so an
    output that cancels to near zero (one output of a narrow layer) would otherwise ask more
    than float32 can give; results that do not cancel are held to ``REL_TOL`` as before."""
    def magnitude(path, leaf):
        leaf = np.abs(np.asarray(leaf, np.float64))
        return -leaf if path[-1].key == "mean" else leaf

    exact = forward(variables, x)
    terms = forward(jax.tree_util.tree_map_with_path(magnitude, variables), np.abs(x))
    scale = max(np.max(np.abs(exact)), 1e-2 * np.max(np.abs(terms)), 1e-12)
    return float(np.max(np.abs(exact - np.asarray(y, np.float64))) / scale)


def assert_trees_close(a, b, rtol, atol):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64),
                                   rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- host numpy, drawn


@SETTINGS
@given(layer_cases)
def test_merged_layer_computes_the_chain(case):
    _, _, x, variables = build(case)
    merged = merge_hrf(variables)["params"]
    y = np.asarray(x, np.float64) @ merged["kernel"] + merged.get("bias", 0)
    err = merge_err(chain_forward, variables, x, y)
    WORST["rel"] = max(WORST["rel"], err)
    assert err <= REL_TOL


@SETTINGS
@given(layer_cases)
def test_merged_tree_has_plain_structure_and_count(case):
    _, plain, x, variables = build(case)
    merged = merge_hrf(variables)
    plain_vars = jax.eval_shape(plain.init, jax.random.PRNGKey(0), x)
    assert shapes(merged) == shapes(plain_vars)
    assert count_params(merged) == count_params(plain_vars)
    assert hrf_paths(merged) == []
    assert hrf_paths(variables) == ["params"]


@SETTINGS
@given(layer_cases)
def test_merge_is_idempotent_and_pure(case):
    _, _, _, variables = build(case)
    before = jax.tree_util.tree_map(np.copy, variables)
    merged = merge_hrf(variables)
    again = merge_hrf(merged)
    assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(merged)
    for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(merged),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    # the input tree is untouched, structure and values
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(before)
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(before),
                    strict=True):
        np.testing.assert_array_equal(a, b)


@SETTINGS
@given(layer_cases)
def test_host_merge_folds_in_float64_and_keeps_the_dtype(case):
    _, _, _, variables = build(case)
    merged = merge_hrf(variables)
    wide = merge_hrf(jax.tree_util.tree_map(lambda a: a.astype(np.float64), variables))
    for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(wide),
                    strict=True):
        assert isinstance(a, np.ndarray) and a.dtype == np.float32
        np.testing.assert_array_equal(a, b.astype(np.float32))


@SETTINGS
@given(layer_cases)
def test_expand_then_merge_round_trips(case):
    hrf, plain, x, _ = build(case)
    plain_vars = random_tree(plain, x, case["seed"])
    expanded = expand_hrf(
        plain_vars, jax.random.PRNGKey(case["seed"]), case["ratio"], case["depth"],
        pattern="^params$", bias=case["hrf_bias"],
    )
    # the expanded tree loads into the HRF layer and computes the same function
    assert shapes(expanded) == shapes(jax.eval_shape(hrf.init, jax.random.PRNGKey(0), x))
    assert rel_err(chain_forward(plain_vars, x), chain_forward(expanded, x)) <= REL_TOL
    assert_trees_close(merge_hrf(expanded), plain_vars, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(d=st.integers(1, 16), out=st.integers(1, 16), extra=st.integers(0, 16),
       depth=st.sampled_from([1, 2, 3]), seed=st.integers(0, 2**16))
def test_orthogonal_expansion_has_orthonormal_factors_that_multiply_back(d, out, extra, depth,
                                                                        seed):
    kernel = np.random.default_rng(seed).standard_normal((d, out))
    factors, host = orthogonal_expansion(kernel, jax.random.PRNGKey(seed), d + extra, depth)
    assert [q.shape for q in factors] == [(d, d + extra)] + [(d + extra, d + extra)] * (depth - 1)
    for q in factors:
        np.testing.assert_allclose(q @ q.T, np.eye(q.shape[0]), atol=1e-12)
    product = host
    for q in reversed(factors):
        product = q @ product
    np.testing.assert_allclose(product, kernel, atol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@SETTINGS
@given(case=layer_cases)
def test_low_precision_host_merge_rounds_once(dtype, case):
    """bf16/fp16 trees: the fold equals the exact (float64) fold rounded once to the dtype."""
    _, _, _, variables = build(case)
    low = jax.tree_util.tree_map(lambda a: a.astype(dtype), variables)
    merged = merge_hrf(low)
    exact = merge_hrf(jax.tree_util.tree_map(lambda a: a.astype(np.float64), low))
    for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(exact),
                    strict=True):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b.astype(dtype))


def norm_chain_forward(variables, x):
    """The layer with ``hrf_norm_i`` after each ``hrf_i`` in float64, BatchNorm in eval mode."""
    node, stats = variables["params"], variables.get("batch_stats", {})
    depth = sum(key.startswith("hrf_") and key[4:].isdigit() for key in node)
    y = np.asarray(x, np.float64)
    f64 = lambda a: np.asarray(a, np.float64)
    for i in range(depth):
        layer, norm = node[f"hrf_{i}"], node[f"hrf_norm_{i}"]
        y = y @ f64(layer["kernel"]) + (f64(layer["bias"]) if "bias" in layer else 0)
        if "bias" in norm:
            s = stats[f"hrf_norm_{i}"]
            y = (y - f64(s["mean"])) / np.sqrt(f64(s["var"]) + BN_EPSILON) * f64(norm["scale"])
            y = y + f64(norm["bias"])
        else:
            y = y * f64(norm["scale"])
    return y @ f64(node["kernel"]) + (f64(node["bias"]) if "bias" in node else 0)


@SETTINGS
@given(layer_cases, st.sampled_from(["scale", "batchnorm"]))
# one output that cancels to 4e-6 of its terms: 1.2e-5 relative to itself (a CI failure)
@example({"d_in": 15, "d_out": 1, "ratio": 4, "depth": 2, "use_bias": False,
          "hrf_bias": False, "lead": [1], "seed": 0}, "scale")
def test_norms_in_the_chain_fold_exactly(case, norm):
    """Random scales, BatchNorm affines and running statistics (vars in [0.5, 2])."""
    use_bias = case["use_bias"] or norm == "batchnorm"  # the folded BN shift needs a host bias
    hrf = HRFDense(case["d_out"], use_bias=use_bias, hrf_ratio=case["ratio"],
                   hrf_depth=case["depth"], hrf_bias=case["hrf_bias"], hrf_norm=norm)
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((*case["lead"], case["d_in"])).astype(np.float32)
    structure = jax.eval_shape(lambda: hrf.init(jax.random.PRNGKey(0), x, train=False))
    variables = jax.tree_util.tree_map_with_path(
        lambda path, s: (rng.uniform(0.5, 2.0, s.shape) if path[-1].key == "var"
                         else 0.5 * rng.standard_normal(s.shape)).astype(np.float32), structure)
    merged = merge_hrf(variables)
    assert set(merged) == {"params"} and hrf_paths(merged) == []  # statistics folded away
    y = np.asarray(x, np.float64) @ merged["params"]["kernel"] + merged["params"].get("bias", 0)
    err = merge_err(norm_chain_forward, variables, x, y)
    WORST["rel"] = max(WORST["rel"], err)
    assert err <= REL_TOL


# --------------------------------------------------------------------------- jax, fixed shapes


@pytest.fixture(scope="module", params=FIXED_CASES, ids=lambda c: f"{c['d_in']}x{c['d_out']}")
def jax_case(request):
    """A fixed layer case with jax variables, shared by the jax tests below."""
    hrf, plain, x, variables = build(request.param)
    return request.param, hrf, plain, x, jax.tree_util.tree_map(jnp.asarray, variables)


def test_merged_model_output_equals_hrf_model_output(jax_case):
    _, hrf, plain, x, variables = jax_case
    with jax.default_matmul_precision("highest"):
        y_hrf = hrf.apply(variables, x)
        y_merged = plain.apply(merge_hrf(variables), x)
    assert rel_err(chain_forward(variables, x), y_hrf) <= REL_TOL  # the oracle is the layer
    assert rel_err(y_hrf, y_merged) <= REL_TOL


def test_merge_under_jit_matches_eager_and_host(jax_case):
    _, _, _, _, variables = jax_case
    eager = merge_hrf(variables)
    jitted = jax.jit(merge_hrf)(variables)
    host = merge_hrf(jax.tree_util.tree_map(np.asarray, variables))
    assert all(isinstance(a, jax.Array) for a in jax.tree_util.tree_leaves(eager))
    assert_trees_close(jitted, eager, rtol=1e-6, atol=1e-6)
    assert_trees_close(host, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_jax_merge_folds_in_float32(jax_case, dtype):
    _, _, _, _, variables = jax_case
    low = jax.tree_util.tree_map(lambda a: a.astype(dtype), variables)
    merged = merge_hrf(low)
    reference = merge_hrf(jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), low))
    for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(reference),
                    strict=True):
        assert a.dtype == dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(dtype)))


def test_expand_on_jax_arrays_preserves_the_model_function(jax_case):
    case, hrf, plain, x, _ = jax_case
    plain_vars = jax.tree_util.tree_map(jnp.asarray, random_tree(plain, x, 3))
    expanded = expand_hrf(plain_vars, jax.random.PRNGKey(4), case["ratio"], case["depth"],
                          pattern="^params$", bias=case["hrf_bias"])
    assert all(isinstance(a, jax.Array) for a in jax.tree_util.tree_leaves(expanded))
    with jax.default_matmul_precision("highest"):
        assert rel_err(plain.apply(plain_vars, x), hrf.apply(expanded, x)) <= REL_TOL
        assert_trees_close(merge_hrf(expanded), plain_vars, rtol=1e-4, atol=1e-5)


def teardown_module(module):
    print(f"\nworst relative merge error in property tests: {WORST['rel']:.3e}")
