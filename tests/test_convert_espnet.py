"""ESPnet Conformer -> hrf_jax: parity with the reference fixtures and, through an independent
numpy port of ESPnet's encoder (checked against the fixtures first), with ESPnet Conformers of
widths, depths and head counts the fixtures do not cover."""

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_testutil import rel_err

from hrf_jax import count_params, expand_hrf, merge_hrf
from hrf_jax.convert import from_espnet_conformer
from hrf_jax.hrf import HRFSpec
from hrf_jax.models import build_model
from hrf_jax.models.conformer import Conformer

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
TOL = 1e-5
FIXTURE_HEADS = 4


def load_fixture(kind: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"conformer_espnet_{kind}_d32.npz") as data:
        return {name: data[name] for name in data.files}


def state_dict_of(fixture: dict) -> dict[str, np.ndarray]:
    return {n[len("state_dict/"):]: a for n, a in fixture.items() if n.startswith("state_dict/")}


# --- an independent numpy port of ESPnet's Conformer Encoder forward (eval mode, float64) ---

def _ln(sd, name, h, eps=1e-12):
    mu = h.mean(-1, keepdims=True)
    var = ((h - mu) ** 2).mean(-1, keepdims=True)
    return (h - mu) / np.sqrt(var + eps) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _lin(sd, name, h):
    out = h @ sd[f"{name}.weight"].T
    return out + sd[f"{name}.bias"] if f"{name}.bias" in sd else out


def _conv2d_s2(sd, name, h):
    """``Conv2d(k=3, stride=2)`` without padding over ``(B, C, T, F)``."""
    w = sd[f"{name}.weight"]
    t, f = (h.shape[2] - 3) // 2 + 1, (h.shape[3] - 3) // 2 + 1
    out = sum(np.einsum("bitf,oi->botf", h[:, :, i:i + 2 * t - 1:2, j:j + 2 * f - 1:2],
                        w[:, :, i, j]) for i in range(3) for j in range(3))
    return np.maximum(out + sd[f"{name}.bias"][None, :, None, None], 0)


def _sinusoid(pos, d):
    angle = pos[:, None] * np.exp(np.arange(0, d, 2) * -(np.log(10000.0) / d))[None]
    pe = np.zeros((len(pos), d))
    pe[:, 0::2], pe[:, 1::2] = np.sin(angle), np.cos(angle)
    return pe


def _attention(sd, p, h, heads, rel):
    b, t, d = h.shape
    dk = d // heads
    q, k, v = (_lin(sd, f"{p}.linear_{n}", h).reshape(b, t, heads, dk) for n in "qkv")
    if rel:
        # embeddings of the relative distances t-1 .. -(t-1); distance i-j sits at t-1-(i-j)
        pos = (_sinusoid(np.arange(t - 1, -t, -1.0), d) @ sd[f"{p}.linear_pos.weight"].T)
        pos = pos.reshape(2 * t - 1, heads, dk)
        ac = np.einsum("bihc,bjhc->bhij", q + sd[f"{p}.pos_bias_u"], k)
        bd_full = np.einsum("bihc,mhc->bhim", q + sd[f"{p}.pos_bias_v"], pos)
        i, j = np.arange(t)[:, None], np.arange(t)[None]
        scores = (ac + bd_full[:, :, i, t - 1 - i + j]) / np.sqrt(dk)
    else:
        scores = np.einsum("bihc,bjhc->bhij", q, k) / np.sqrt(dk)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return _lin(sd, f"{p}.linear_out", np.einsum("bhij,bjhc->bihc", weights, v).reshape(h.shape))


def _conv_module(sd, p, h):
    h = h @ sd[f"{p}.pointwise_conv1.weight"][..., 0].T + sd[f"{p}.pointwise_conv1.bias"]
    a, gate = np.split(h, 2, axis=-1)
    h = a / (1 + np.exp(-gate))
    w = sd[f"{p}.depthwise_conv.weight"][:, 0]  # (d, k)
    k = w.shape[1]
    padded = np.pad(h, ((0, 0), ((k - 1) // 2,) * 2, (0, 0)))
    h = sum(padded[:, i:i + h.shape[1]] * w[:, i] for i in range(k))
    h = h + sd[f"{p}.depthwise_conv.bias"]
    h = ((h - sd[f"{p}.norm.running_mean"]) / np.sqrt(sd[f"{p}.norm.running_var"] + 1e-5)
         * sd[f"{p}.norm.weight"] + sd[f"{p}.norm.bias"])
    h = h / (1 + np.exp(-h))
    return h @ sd[f"{p}.pointwise_conv2.weight"][..., 0].T + sd[f"{p}.pointwise_conv2.bias"]


def _ffn(sd, p, h):
    h = _lin(sd, f"{p}.w_1", h)
    return _lin(sd, f"{p}.w_2", h / (1 + np.exp(-h)))


def espnet_encoder(sd: dict, x: np.ndarray, heads: int) -> np.ndarray:
    """ESPnet's Conformer ``Encoder`` on unpadded ``x (B, T, F)`` -> ``(B, T', d)``."""
    sd = {n: np.asarray(a, np.float64) for n, a in sd.items()}
    rel = "encoders.0.self_attn.pos_bias_u" in sd
    h = _conv2d_s2(sd, "embed.conv.2", _conv2d_s2(sd, "embed.conv.0", x[:, None]))
    b, c, t, f = h.shape
    h = _lin(sd, "embed.out.0", h.transpose(0, 2, 1, 3).reshape(b, t, c * f))
    d = h.shape[-1]
    h = h * np.sqrt(d) + (0 if rel else _sinusoid(np.arange(t, dtype=float), d))
    for i in range(len({n.split(".")[1] for n in sd if n.startswith("encoders.")})):
        p = f"encoders.{i}"
        h = h + 0.5 * _ffn(sd, f"{p}.feed_forward_macaron", _ln(sd, f"{p}.norm_ff_macaron", h))
        h = h + _attention(sd, f"{p}.self_attn", _ln(sd, f"{p}.norm_mha", h), heads, rel)
        h = h + _conv_module(sd, f"{p}.conv_module", _ln(sd, f"{p}.norm_conv", h))
        h = h + 0.5 * _ffn(sd, f"{p}.feed_forward", _ln(sd, f"{p}.norm_ff", h))
        h = _ln(sd, f"{p}.norm_final", h)
    return _ln(sd, "after_norm", h)


def espnet_shapes(idim: int, d: int, units: int, blocks: int, kernel: int, heads: int,
                  rel: bool) -> dict[str, tuple[int, ...]]:
    """Names and shapes of an ESPnet Conformer ``Encoder``'s state_dict (conv2d input)."""
    f = ((idim - 1) // 2 - 1) // 2
    shapes = {"embed.conv.0.weight": (d, 1, 3, 3), "embed.conv.0.bias": (d,),
              "embed.conv.2.weight": (d, d, 3, 3), "embed.conv.2.bias": (d,),
              "embed.out.0.weight": (d, d * f), "embed.out.0.bias": (d,),
              "after_norm.weight": (d,), "after_norm.bias": (d,)}
    for i in range(blocks):
        p = f"encoders.{i}"
        linears = {"self_attn.linear_q": (d, d), "self_attn.linear_k": (d, d),
                   "self_attn.linear_v": (d, d), "self_attn.linear_out": (d, d),
                   "feed_forward.w_1": (units, d), "feed_forward.w_2": (d, units),
                   "feed_forward_macaron.w_1": (units, d), "feed_forward_macaron.w_2": (d, units),
                   "conv_module.pointwise_conv1": (2 * d, d, 1),
                   "conv_module.depthwise_conv": (d, 1, kernel),
                   "conv_module.pointwise_conv2": (d, d, 1)}
        for name, shape in linears.items():
            shapes[f"{p}.{name}.weight"], shapes[f"{p}.{name}.bias"] = shape, shape[:1]
        for norm in ("norm_ff", "norm_mha", "norm_ff_macaron", "norm_conv", "norm_final",
                     "conv_module.norm"):
            shapes[f"{p}.{norm}.weight"] = shapes[f"{p}.{norm}.bias"] = (d,)
        shapes[f"{p}.conv_module.norm.running_mean"] = (d,)
        shapes[f"{p}.conv_module.norm.running_var"] = (d,)
        if rel:
            shapes[f"{p}.self_attn.linear_pos.weight"] = (d, d)
            shapes[f"{p}.self_attn.pos_bias_u"] = shapes[f"{p}.self_attn.pos_bias_v"] = (
                heads, d // heads)
    return shapes


def random_state_dict(shapes: dict, seed: int) -> dict[str, np.ndarray]:
    """Weights ~ N(0, 1/fan_in), norm weights 1 + 0.2 N, biases 0.2 N, BN vars U(0.5, 2)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        z = rng.standard_normal(shape)
        if name.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        elif "norm" in name and name.endswith(".weight"):
            value = 1 + 0.2 * z
        elif name.endswith(".weight") and len(shape) > 1:
            value = z / np.sqrt(np.prod(shape[1:]))
        else:
            value = 0.2 * z
        out[name] = value.astype(np.float32)
    return out


def run(model, variables, x, mask=None):
    """``(logits, encoder_out)`` in eval mode, highest matmul precision (one compiled program:
    op-by-op dispatch compiles every op once, slower)."""
    mask = np.ones(x.shape[:2], bool) if mask is None else mask
    with jax.default_matmul_precision("highest"):
        logits, state = jax.jit(functools.partial(model.apply, mutable=["intermediates"]))(
            variables, x, mask)
    return logits, state["intermediates"]["encoder_out"][0]


@pytest.mark.parametrize("kind", ["rel", "abs"])
def test_numpy_port_matches_fixture(kind):
    fixture = load_fixture(kind)
    encoder_out = espnet_encoder(state_dict_of(fixture), fixture["x"], FIXTURE_HEADS)
    logits = encoder_out.mean(1) @ fixture["head/weight"].T + fixture["head/bias"]
    assert rel_err(fixture["encoder_out"], encoder_out) <= TOL
    assert rel_err(fixture["logits"], logits) <= TOL


@pytest.mark.parametrize("kind", ["rel", "abs"])
def test_converter_matches_fixture(kind):
    fixture = load_fixture(kind)
    model, variables = from_espnet_conformer(
        state_dict_of(fixture), FIXTURE_HEADS, (fixture["head/weight"], fixture["head/bias"]))
    assert model.cfg.pos_enc == kind and model.cfg.final_norm
    logits, encoder_out = run(model, variables, fixture["x"])
    assert rel_err(fixture["encoder_out"], encoder_out) <= TOL
    assert rel_err(fixture["logits"], logits) <= TOL


@pytest.mark.parametrize("d,heads,blocks,units,kernel,rel", [
    (48, 4, 3, 96, 15, True), (64, 8, 1, 160, 7, False)])  # 160: FFN width not a multiple
def test_converter_matches_numpy_port_on_unseen_shapes(d, heads, blocks, units, kernel, rel):
    idim, frames = 24, 70
    sd = random_state_dict(espnet_shapes(idim, d, units, blocks, kernel, heads, rel), seed=d)
    model, variables = from_espnet_conformer(sd, heads, num_classes=3)
    assert (model.cfg.d_model, model.cfg.num_layers, model.cfg.ffn_dim) == (d, blocks, units)
    x = np.random.default_rng(1).standard_normal((2, frames, idim)).astype(np.float32)
    # row 1 has 50 real frames: it must equal ESPnet on that utterance alone
    mask = np.arange(frames)[None] < np.array([[frames], [50]])
    logits, encoder_out = run(model, variables, x, mask)
    for row, n in enumerate((frames, 50)):
        want = espnet_encoder(sd, x[row:row + 1, :n], heads)[0]
        assert rel_err(want, encoder_out[row, :len(want)]) <= TOL
        head = variables["params"]["classifier"]
        assert rel_err(want.mean(0) @ head["kernel"] + head["bias"], logits[row]) <= TOL


def test_errors_name_the_parameter():
    sd = state_dict_of(load_fixture("abs"))
    with pytest.raises(ValueError, match="encoders.1.feed_forward.w_2.bias"):
        from_espnet_conformer({**sd, "encoders.1.feed_forward.w_2.bias": np.zeros(5)}, 4,
                              num_classes=4)
    with pytest.raises(ValueError, match="encoders.0.extra.weight"):
        from_espnet_conformer({**sd, "encoders.0.extra.weight": np.zeros(3)}, 4, num_classes=4)
    missing = {n: a for n, a in sd.items() if n != "after_norm.bias"}
    with pytest.raises(ValueError, match="after_norm.bias"):
        from_espnet_conformer(missing, 4, num_classes=4)
    with pytest.raises(ValueError, match="num_heads"):
        from_espnet_conformer(sd, 5, num_classes=4)
    with pytest.raises(ValueError, match="head"):
        from_espnet_conformer(sd, 4, (np.zeros((4, 31)), np.zeros(4)))


def test_expand_merge_and_train_step():
    # a tiny converted model: the gradient step's compile dominates this file's time
    sd = random_state_dict(espnet_shapes(24, 16, 32, 1, 7, 2, rel=True), seed=0)
    model, variables = from_espnet_conformer(sd, 2, num_classes=4)
    x = np.random.default_rng(0).standard_normal((2, 40, 24)).astype(np.float32)
    mask = np.arange(40)[None] < np.array([[40], [30]])
    want, _ = run(model, variables, x, mask)
    grown = expand_hrf(variables, jax.random.PRNGKey(0), ratio=2)
    hrf_model = Conformer(model.cfg, model.num_classes, HRFSpec(ratio=2))
    assert rel_err(want, run(hrf_model, grown, x, mask)[0]) <= TOL
    assert rel_err(want, run(model, merge_hrf(grown), x, mask)[0]) <= TOL

    def loss(params, batch_stats):
        logits, state = hrf_model.apply({"params": params, "batch_stats": batch_stats}, x, mask,
                                        train=True, rngs={"dropout": jax.random.PRNGKey(1)},
                                        mutable=["batch_stats"])
        return -jax.nn.log_softmax(logits)[:, 0].mean(), state

    @jax.jit
    def step(params, batch_stats):
        (value, state), grads = jax.value_and_grad(loss, has_aux=True)(params, batch_stats)
        return value, jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), state

    value, params, state = step(grown["params"], grown["batch_stats"])
    assert np.isfinite(value)
    assert all(np.isfinite(a).all() for a in jax.tree.leaves((params, state)))


@pytest.mark.parametrize("size,units", [("light", 192), ("large", 576)])
def test_reference_preset_counts_as_espnet(size, units):
    # the reference preset has ESPnet's parameters plus the linear head (running stats aside)
    feats, mask = jnp.zeros((1, 64, 128)), jnp.ones((1, 64), bool)

    def count(**kw):
        model = build_model("conformer", size, num_classes=4, **kw)
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), feats, mask)
        return model.cfg, count_params(shapes["params"])

    cfg, ours = count(reference=True)
    shapes = espnet_shapes(128, cfg.d_model, units, cfg.num_layers, cfg.kernel_size,
                           cfg.num_heads, rel=True)
    theirs = sum(int(np.prod(s)) for n, s in shapes.items() if "running" not in n)
    assert ours == theirs + 4 * cfg.d_model + 4
    assert count()[1] == ours - 2 * cfg.d_model  # the default lacks ESPnet's final LayerNorm


def test_position_embeddings_drop_out_while_training_only():
    """ESPnet's ``RelPositionalEncoding`` drops its position embeddings at the positional
    dropout rate (``pos_dropout``, 0.1 in the preset); eval mode never sees it."""
    sd = random_state_dict(espnet_shapes(24, 16, 32, 1, 7, 2, rel=True), seed=0)
    model, variables = from_espnet_conformer(sd, 2, num_classes=4)
    assert model.cfg.pos_dropout == 0.1
    x = np.random.default_rng(0).standard_normal((2, 40, 24)).astype(np.float32)
    mask = np.arange(40)[None] < np.array([[40], [30]])

    def logits(pos_dropout, train):  # every other dropout off: only the table's can differ
        cfg = dataclasses.replace(model.cfg, dropout=0.0, pos_dropout=pos_dropout)
        fn = functools.partial(Conformer(cfg, 4).apply, train=train, mutable=["batch_stats"],
                               rngs={"dropout": jax.random.PRNGKey(1)})
        return np.asarray(jax.jit(fn)(variables, x, mask)[0])

    np.testing.assert_array_equal(logits(0.1, False), logits(0.0, False))
    assert np.abs(logits(0.1, True) - logits(0.0, True)).max() > 1e-4
