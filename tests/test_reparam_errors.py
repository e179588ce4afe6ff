"""Malformed trees raise ValueError naming the '/'-joined path and the shapes."""

import jax
import numpy as np
import pytest

from hrf_jax import expand_hrf, merge_hrf


def host(**extra):
    node = {"hrf_0": {"kernel": np.ones((4, 8)), "bias": np.ones(8)},
            "kernel": np.ones((8, 3)), "bias": np.ones(3)}
    node.update(extra)
    return {"params": {"block_0": {"fc1": node}}}


def test_shapes_that_do_not_chain_name_both_paths():
    tree = host(kernel=np.ones((6, 3)))
    with pytest.raises(ValueError, match=r"params/block_0/fc1/hrf_0/kernel \(4, 8\).*"
                                         r"params/block_0/fc1/kernel \(6, 3\)"):
        merge_hrf(tree)


def test_missing_host_bias_when_hrf_has_bias():
    tree = host()
    del tree["params"]["block_0"]["fc1"]["bias"]
    with pytest.raises(ValueError, match=r"params/block_0/fc1 has no 'bias'"):
        merge_hrf(tree)


def test_bias_of_wrong_shape():
    tree = host()
    tree["params"]["block_0"]["fc1"]["hrf_0"]["bias"] = np.ones(5)
    with pytest.raises(ValueError, match=r"params/block_0/fc1/hrf_0/bias has shape \(5,\)"):
        merge_hrf(tree)


def test_non_array_leaf_is_named():
    tree = host()
    tree["params"]["block_0"]["scale"] = 1.5
    with pytest.raises(ValueError, match=r"non-array leaf at params/block_0/scale: float"):
        merge_hrf(tree)


def test_non_array_leaf_inside_chain():
    tree = host()
    tree["params"]["block_0"]["fc1"]["hrf_0"]["kernel"] = [[1.0]]
    with pytest.raises(ValueError, match=r"params/block_0/fc1/hrf_0/kernel: list"):
        merge_hrf(tree)


def test_gap_in_chain_indices():
    tree = host()
    node = tree["params"]["block_0"]["fc1"]
    node["hrf_2"] = node.pop("hrf_0")
    with pytest.raises(ValueError, match=r"params/block_0/fc1: HRF layers must be hrf_0"):
        merge_hrf(tree)


def test_hrf_layer_without_kernel():
    tree = host()
    del tree["params"]["block_0"]["fc1"]["hrf_0"]["kernel"]
    with pytest.raises(ValueError, match=r"params/block_0/fc1/hrf_0 has no 'kernel'"):
        merge_hrf(tree)


def test_non_2d_kernel():
    tree = host()
    tree["params"]["block_0"]["fc1"]["hrf_0"]["kernel"] = np.ones((4, 8, 1))
    with pytest.raises(ValueError, match=r"hrf_0/kernel must be 2-D.*\(4, 8, 1\)"):
        merge_hrf(tree)


def test_expand_needs_a_match_and_a_wide_enough_chain():
    plain = {"params": {"ffn": {"fc1": {"kernel": np.ones((8, 2)), "bias": np.zeros(2)}}}}
    rng = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="no layer path matched"):
        expand_hrf(plain, rng, 2, pattern="nothing_here")
    with pytest.raises(ValueError, match=r"params/ffn/fc1: HRF width 4 < input width 8"):
        expand_hrf(plain, rng, 2, base="out")
    with pytest.raises(ValueError, match="already carries an HRF chain"):
        expand_hrf(expand_hrf(plain, rng, 2), rng, 2)


def test_malformed_norms_in_a_chain():
    tree = host(hrf_norm_0={"gain": np.ones(8)})
    with pytest.raises(ValueError, match=r"params/block_0/fc1/hrf_norm_0 should hold 'scale'"):
        merge_hrf(tree)
    tree = host(hrf_norm_1={"scale": np.ones(8)})  # no hrf_1 for it to follow
    with pytest.raises(ValueError, match=r"unexpected keys \['hrf_norm_1'\]"):
        merge_hrf(tree)
    tree = host(hrf_norm_0={"scale": np.ones(8), "bias": np.ones(8)})
    tree["batch_stats"] = {"block_0": {"fc1": {"hrf_norm_0": {"mean": np.zeros(8),
                                                              "var": np.ones(5)}}}}
    with pytest.raises(ValueError, match=r"batch_stats/block_0/fc1/hrf_norm_0/var has shape "
                                         r"\(5,\), expected \(8,\)"):
        merge_hrf(tree)
