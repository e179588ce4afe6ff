"""fairseq ConvTransformer -> hrf_jax: the reference preset's structure and positional encoding,
parity with an independent numpy port of fairseq's encoder, and the converter's round trip."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_testutil import random_variables, rel_err

from hrf_jax import count_params
from hrf_jax.convert import from_fairseq_convtransformer
from hrf_jax.models import build_model
from hrf_jax.models.convtransformer import fairseq_sinusoidal_encoding

TOL = 1e-5
# convtransformer_espnet on 128-dim input with a masked-mean + linear 4-class head
FAIRSEQ_LARGE_PARAMS = 18_471_940
SMALL = {"d_model": 32, "num_layers": 2, "num_heads": 4, "ffn_dim": 64,
         "subsampling_channels": 8}
FEAT_DIM, FRAMES = 40, 50


def fairseq_pe(length: int, dim: int) -> np.ndarray:
    """fairseq's sinusoid, written from its definition: position p = t + 2 (padding index 1
    plus 1), ``[sin(p w_i) | cos(p w_i)]`` with ``w_i = 10000^(-i/(dim/2 - 1))``, zero last
    channel for an odd ``dim``."""
    half = dim // 2
    w = 10000.0 ** (-np.arange(half) / (half - 1))
    p = np.arange(length)[:, None] + 2.0
    out = np.zeros((length, dim))
    out[:, :half], out[:, half:2 * half] = np.sin(p * w), np.cos(p * w)
    return out


# --- an independent numpy port of fairseq's ConvTransformerEncoder forward (eval mode) ---

def _conv2d_s2p1(w, b, h):
    """``Conv2d(k=3, stride=2, padding=1)`` over ``(B, C, T, F)``, then ReLU."""
    h = np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))
    t, f = (h.shape[2] - 3) // 2 + 1, (h.shape[3] - 3) // 2 + 1
    out = sum(np.einsum("bitf,oi->botf", h[:, :, i:i + 2 * t - 1:2, j:j + 2 * f - 1:2],
                        w[:, :, i, j]) for i in range(3) for j in range(3))
    return np.maximum(out + b[None, :, None, None], 0)


def fairseq_encoder(sd: dict, x: np.ndarray, heads: int) -> np.ndarray:
    """fairseq's ``ConvTransformerEncoder`` (post-LN) on unpadded ``x (B, T, F)``."""
    sd = {n: np.asarray(a, np.float64) for n, a in sd.items()}

    def lin(name, h):
        return h @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    def ln(name, h):
        mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + 1e-5) * sd[f"{name}.weight"] + sd[f"{name}.bias"]

    h = _conv2d_s2p1(sd["conv.0.weight"], sd["conv.0.bias"], x[:, None])
    h = _conv2d_s2p1(sd["conv.2.weight"], sd["conv.2.bias"], h)
    b, c, t, f = h.shape
    h = lin("out", h.transpose(0, 2, 1, 3).reshape(b, t, c * f))
    d = h.shape[-1]
    h = h * np.sqrt(d) + fairseq_pe(t, d)
    for i in range(len({n.split(".")[1] for n in sd if n.startswith("transformer_layers.")})):
        p = f"transformer_layers.{i}"
        q, k, v = (lin(f"{p}.self_attn.{n}_proj", h).reshape(b, t, heads, d // heads)
                   for n in "qkv")
        scores = np.einsum("bihc,bjhc->bhij", q * (d // heads) ** -0.5, k)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        attn = np.einsum("bhij,bjhc->bihc", weights, v).reshape(b, t, d)
        h = ln(f"{p}.self_attn_layer_norm", h + lin(f"{p}.self_attn.out_proj", attn))
        ffn = lin(f"{p}.fc2", np.maximum(lin(f"{p}.fc1", h), 0))
        h = ln(f"{p}.final_layer_norm", h + ffn)
    return h


def to_fairseq(params: dict) -> dict[str, np.ndarray]:
    """A ConvTransformer's params under fairseq's ``ConvTransformerEncoder`` names."""
    sub = params["subsampling"]

    def linear(name, node):
        return {f"{name}.weight": np.asarray(node["kernel"]).T, f"{name}.bias": node["bias"]}

    def norm(name, node):
        return {f"{name}.weight": node["scale"], f"{name}.bias": node["bias"]}

    sd = {"conv.0.weight": np.asarray(sub["conv_0"]["kernel"]).transpose(3, 2, 0, 1),
          "conv.0.bias": sub["conv_0"]["bias"],
          "conv.2.weight": np.asarray(sub["conv_1"]["kernel"]).transpose(3, 2, 0, 1),
          "conv.2.bias": sub["conv_1"]["bias"], **linear("out", sub["proj"])}
    for i in range(sum(name.startswith("layer_") for name in params)):
        layer, p = params[f"layer_{i}"], f"transformer_layers.{i}"
        for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "out")):
            sd.update(linear(f"{p}.self_attn.{theirs}_proj", layer["attn"][ours]))
        sd.update(norm(f"{p}.self_attn_layer_norm", layer["ln_attn"]))
        sd.update(linear(f"{p}.fc1", layer["ffn"]["fc1"]))
        sd.update(linear(f"{p}.fc2", layer["ffn"]["fc2"]))
        sd.update(norm(f"{p}.final_layer_norm", layer["ln_ffn"]))
    return sd


def head_of(params: dict) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(params["classifier"]["kernel"]).T, params["classifier"]["bias"]


def eval_fn(model):
    def apply(variables, x, mask):
        with jax.default_matmul_precision("highest"):
            logits, state = model.apply(variables, x, mask, mutable=["intermediates"])
        return logits, state["intermediates"]["encoder_out"][0]
    return jax.jit(apply)


@pytest.fixture(scope="module")
def small():
    """A small reference-preset model, random variables, inputs (row 1: 37 real frames)."""
    model = build_model("convtransformer", "light", num_classes=4, reference=True, **SMALL)
    x = np.random.default_rng(0).standard_normal((2, FRAMES, FEAT_DIM)).astype(np.float32)
    mask = np.arange(FRAMES)[None] < np.array([[FRAMES], [37]])
    return model, random_variables(model, x, mask), x, mask


def test_reference_large_has_fairseq_parameter_count():
    feats, mask = jnp.zeros((1, 64, 128)), jnp.ones((1, 64), bool)

    def count(**kw):
        model = build_model("convtransformer", "large", num_classes=4, **kw)
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), feats, mask)
        return count_params(shapes["params"])

    assert count(reference=True) == FAIRSEQ_LARGE_PARAMS
    # VALID convs leave 31 frequency bins instead of 32: 256 x 256 fewer projection weights
    assert count() == FAIRSEQ_LARGE_PARAMS - 65_536


@pytest.mark.parametrize("length,dim", [(300, 256), (20, 7)])
def test_positional_encoding_is_fairseqs(length, dim):
    got = np.asarray(fairseq_sinusoidal_encoding(length, dim))
    np.testing.assert_allclose(got, fairseq_pe(length, dim), atol=5e-5 * length / 300 + 1e-6)


def test_reference_preset_matches_numpy_port(small):
    model, variables, x, mask = small
    logits, encoder_out = eval_fn(model)(variables, x, mask)
    sd, (weight, bias) = to_fairseq(variables["params"]), head_of(variables["params"])
    # each row is fairseq on its utterance alone: ceil(L/4) real frames
    for row, n in enumerate((FRAMES, 37)):
        want = fairseq_encoder(sd, x[row:row + 1, :n], SMALL["num_heads"])[0]
        assert len(want) == -(-n // 4)
        assert rel_err(want, encoder_out[row, :len(want)]) <= TOL
        assert rel_err(want.mean(0) @ weight.T + bias, logits[row]) <= TOL


@pytest.mark.parametrize("pre_ln", [False, True])
def test_converter_round_trip(small, pre_ln):
    model, variables, x, mask = small
    if pre_ln:
        model = model.clone(cfg=dataclasses.replace(model.cfg, pre_ln=True))
    sd = to_fairseq(variables["params"])
    if pre_ln:  # built by fairseq for normalize_before, never applied
        sd["layer_norm.weight"], sd["layer_norm.bias"] = np.ones(32), np.zeros(32)
    sd["embed_positions._float_tensor"] = np.zeros(1)
    converted, conv_vars = from_fairseq_convtransformer(
        {f"encoder.{n}": a for n, a in sd.items()} | {"decoder.x.weight": np.zeros(2)},
        SMALL["num_heads"], head_of(variables["params"]), prefix="encoder.")
    assert converted.cfg == model.cfg
    assert jax.tree.map(np.shape, conv_vars) == jax.tree.map(np.shape, variables)
    want, got = eval_fn(model)(variables, x, mask), eval_fn(converted)(conv_vars, x, mask)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_errors_name_the_parameter(small):
    _, variables, _, _ = small
    sd = to_fairseq(variables["params"])
    with pytest.raises(ValueError, match="transformer_layers.1.fc1.weight"):
        from_fairseq_convtransformer({**sd, "transformer_layers.1.fc1.weight": np.zeros((3, 3))},
                                     4, num_classes=4)
    with pytest.raises(ValueError, match="transformer_layers.0.extra"):
        from_fairseq_convtransformer({**sd, "transformer_layers.0.extra": np.zeros(3)}, 4,
                                     num_classes=4)
    with pytest.raises(ValueError, match="num_heads"):
        from_fairseq_convtransformer(sd, 5, num_classes=4)
