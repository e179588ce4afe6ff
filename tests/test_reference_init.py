"""The reference presets' initialisation (``init="espnet"``, ``init="fairseq"``): the
references' bounds and variances, the default models' draws and tree, the HRF chains kept.

Models carry HRF chains on the FFN and the head; each is initialised once per session, the
default Conformer only traced (its compilation costs most)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrf_jax import merge_hrf
from hrf_jax.models import build_model

# the Conformer's chains are function-preserving: its merged FFN must be ESPnet's draw
HRF = {"conformer": {"hrf_init": "function_preserving"}, "convtransformer": {}}
LAYER = {"conformer": "block_0", "convtransformer": "layer_0"}


@functools.cache
def init(backbone: str, reference: bool, traced: bool = False) -> dict:
    model = build_model(backbone, "light", num_classes=4, num_layers=1, reference=reference,
                        hrf_ratio=2, hrf_targets=("ffn", "head"), **HRF[backbone])
    x, mask = jnp.ones((1, 32, 40)), jnp.ones((1, 32), bool)
    init_fn = functools.partial(jax.eval_shape, model.init) if traced else jax.jit(model.init)
    return init_fn(jax.random.PRNGKey(0), x, mask)["params"]


def assert_uniform(a, bound: float) -> None:
    """``a`` looks drawn from ``U(-bound, bound)``: inside it, and where there are enough
    values to tell, near its edge and with its variance ``bound^2 / 3`` (5 % is > 5 sigma)."""
    a = np.asarray(a, np.float64)
    assert np.abs(a).max() <= bound * (1 + 1e-6)
    if a.size >= 32:
        assert np.abs(a).max() >= 0.7 * bound
    if a.size >= 4096:
        assert a.var() == pytest.approx(bound**2 / 3, rel=0.05)


def assert_torch_default(node) -> None:
    """PyTorch's ``nn.Linear``/``nn.Conv*`` draw: kernel and bias ``+-1/sqrt(fan_in)``, the
    fan-in of a flax kernel being all its axes but the last."""
    bound = 1 / math.sqrt(math.prod(node["kernel"].shape[:-1]))
    assert_uniform(node["kernel"], bound)
    assert_uniform(node["bias"], bound)


def test_conformer_draws_as_espnets_pytorch_modules():
    p = init("conformer", True)
    block = p["block_0"]
    for node in (p["subsampling"]["conv_0"], p["subsampling"]["conv_1"],
                 p["subsampling"]["proj"], block["attn"]["query"], block["attn"]["out"],
                 block["conv"]["pointwise_1"], block["conv"]["pointwise_2"],
                 block["conv"]["depthwise"]):
        assert_torch_default(node)
    assert p["subsampling"]["proj"]["kernel"].size >= 4096  # one variance checked
    assert_uniform(block["attn"]["pos"]["kernel"], 1 / math.sqrt(48))  # linear_pos, no bias
    # pos_bias_u (heads, d_k): xavier-uniform, as ESPnet's
    assert_uniform(block["attn"]["pos_bias_u"], math.sqrt(6 / (4 + 12)))
    np.testing.assert_array_equal(block["ln_out"]["scale"], 1)
    np.testing.assert_array_equal(block["conv"]["batch_norm"]["bias"], 0)


def test_convtransformer_draws_as_fairseq():
    p = init("convtransformer", True)
    attn, d = p["layer_0"]["attn"], 64
    xavier = math.sqrt(6 / (d + d))
    for name in ("query", "key", "value"):  # gain 1/sqrt(2), nn.Linear's bias
        assert_uniform(attn[name]["kernel"], xavier / math.sqrt(2))
        assert_uniform(attn[name]["bias"], 1 / math.sqrt(d))
    assert_uniform(attn["out"]["kernel"], xavier)
    np.testing.assert_array_equal(attn["out"]["bias"], 0)
    for node in (p["layer_0"]["ffn"]["fc2"], p["subsampling"]["conv_1"], p["subsampling"]["proj"]):
        assert_torch_default(node)
    assert p["layer_0"]["ffn"]["fc2"]["kernel"].size >= 4096


@pytest.mark.parametrize("backbone", ["conformer", "convtransformer"])
def test_reference_draws_keep_the_tree(backbone):
    """The default model's tree (where the configs agree on shapes: fairseq's padded
    subsampling widens the projection); layer norms stay ones and zeros."""
    default, reference = init(backbone, False, traced=True), init(backbone, True)
    shapes = lambda tree: jax.tree_util.tree_map(jnp.shape, tree)
    layer = LAYER[backbone]
    for k in (layer, "classifier"):
        assert shapes(reference[k]) == shapes(default[k])
    ln = reference[layer]["ln_attn"]
    np.testing.assert_array_equal(ln["scale"], 1)
    np.testing.assert_array_equal(ln["bias"], 0)


def test_hrf_chains_keep_their_draw():
    """Chains are drawn as ``hrf_init`` says: the default model's draw of the same seed."""
    default, reference = init("convtransformer", False), init("convtransformer", True)
    for node, plain in ((reference["layer_0"]["ffn"]["fc1"], default["layer_0"]["ffn"]["fc1"]),
                        (reference["classifier"], default["classifier"])):
        jax.tree_util.tree_map(np.testing.assert_array_equal, node["hrf_0"], plain["hrf_0"])
        assert not np.allclose(node["kernel"], plain["kernel"])


def test_hrf_hosts_draw_over_their_own_fan_in_or_preserve_the_references_layer():
    fc1 = init("convtransformer", True)["layer_0"]["ffn"]["fc1"]
    assert_uniform(fc1["kernel"], 1 / math.sqrt(fc1["kernel"].shape[0]))  # host (r, out)
    assert_uniform(fc1["bias"], 1 / math.sqrt(64))  # the plain layer's fan-in
    # function-preserving chains merge to the plain layer, ESPnet's nn.Linear draw
    merged = merge_hrf({"params": init("conformer", True)})["params"]["block_0"]["ffn1"]["fc1"]
    assert_torch_default(merged)


def test_default_draws_are_flax_initialisers():
    """The default model draws as before: LeCun-normal kernels, zero biases."""
    attn = init("convtransformer", False)["layer_0"]["attn"]["query"]
    np.testing.assert_array_equal(attn["bias"], 0)
    assert np.asarray(attn["kernel"]).std() == pytest.approx(1 / math.sqrt(64), rel=0.15)
