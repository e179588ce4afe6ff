"""The official SpeechFormer converter and the reference preset: logits of the official code
(fixtures), and of an independent numpy port of its forward pass for shapes the fixtures lack."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hrf_jax import build_model, count_params, expand_hrf, merge_hrf
from hrf_jax.convert import from_speechformer_official
from hrf_jax.hrf import HRFSpec
from hrf_jax.models.speechformer import PE_COLLECTION, PE_NAME, SpeechFormer
from hrf_jax.train import DataParallel, TrainState, make_train_step

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
PREFIX = "state_dict/"


# --- the official eval-mode forward pass, one unpadded utterance, float64 -----------------

def official_logits(sd, x, num_heads=8, hop=0.01):
    """Logits of the official SpeechFormer for ``x (T, F)``, from its ``state_dict``."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    lin = lambda h, n: h @ sd[f"{n}.weight"].T + sd[f"{n}.bias"]

    def ln(h, n):
        mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + 1e-5) * sd[f"{n}.weight"] + sd[f"{n}.bias"]

    def softmax(s):
        e = np.exp(s - s.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def attention(a, n, window):
        t, c = a.shape
        q, k, v = (z.reshape(t, num_heads, -1) for z in np.split(lin(a, f"{n}.project_qkv"), 3, -1))
        q = q / np.sqrt(c // num_heads)
        if window is None:
            o = np.einsum("qnt,tnh->qnh", softmax(np.einsum("qnh,tnh->qnt", q, k)), v)
        else:  # K/V zero-padded, each query sees the window centred on it
            window += 1 - window % 2
            half = window // 2
            idx = np.arange(t)[:, None] + np.arange(window)
            kw, vw = (np.pad(z, ((half, half), (0, 0), (0, 0)))[idx] for z in (k, v))
            o = np.einsum("qnw,qwnh->qnh", softmax(np.einsum("qnh,qwnh->qnw", q, kw)), vw)
        return lin(o.reshape(t, c), f"{n}.project_out")

    hop_ms = hop * 1000
    merges = [m // hop_ms for m in (50, 250, 1000)]
    windows = [w // hop_ms for w in (50, 400, 2000)]
    width = sd["layers.0.input_norm.weight"].size
    h, last = np.asarray(x, np.float64)[:, :width], 1
    for s in range(4):
        block = f"layers.{2 * s}"
        h = ln(h, f"{block}.input_norm")
        pos = sd["layers.0.position"][: len(h)] if s == 0 else 0  # attention input only
        window = None if s == 3 else int(windows[s] // last)
        i = 0
        while f"{block}.layers.{i}.fc1.weight" in sd:
            n = f"{block}.layers.{i}"
            h = ln(h + attention(h + pos, f"{n}.attention", window), f"{n}.attention_layer_norm")
            h = ln(h + lin(np.maximum(lin(h, f"{n}.fc1"), 0), f"{n}.fc2"), f"{n}.final_layer_norm")
            i += 1
        if s < 3:
            size, last = int(merges[s] // last), merges[s]
            h = np.pad(h, ((0, -len(h) % size), (0, 0))).reshape(-1, size, h.shape[1]).mean(1)
            h = ln(lin(h, f"layers.{2 * s + 1}.fc"), f"layers.{2 * s + 1}.norm")
    h = np.maximum(lin(h.mean(0), "classifier.0"), 0)
    return lin(np.maximum(lin(h, "classifier.3"), 0), "classifier.6")


def random_state_dict(seed, width, ffn, num_layers, expand, classes, pe_rows):
    """An official-layout ``state_dict`` with random values (norms and PE clearly non-trivial)."""
    rng = np.random.default_rng(seed)
    sd = {"layers.0.position": rng.uniform(-1, 1, (pe_rows, width))}

    def linear(n, fan_in, fan_out):
        sd[f"{n}.weight"] = rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in)
        sd[f"{n}.bias"] = 0.1 * rng.standard_normal(fan_out)

    def norm(n, d):
        sd[f"{n}.weight"] = 1 + 0.2 * rng.standard_normal(d)
        sd[f"{n}.bias"] = 0.2 * rng.standard_normal(d)

    d, f = width, ffn
    for s, num in enumerate(num_layers):
        norm(f"layers.{2 * s}.input_norm", d)
        for i in range(num):
            n = f"layers.{2 * s}.layers.{i}"
            linear(f"{n}.attention.project_qkv", d, 3 * d)
            linear(f"{n}.attention.project_out", d, d)
            norm(f"{n}.attention_layer_norm", d)
            linear(f"{n}.fc1", d, f)
            linear(f"{n}.fc2", f, d)
            norm(f"{n}.final_layer_norm", d)
        if s < 3:
            linear(f"layers.{2 * s + 1}.fc", d, d * expand[s])
            norm(f"layers.{2 * s + 1}.norm", d * expand[s])
            d, f = d * expand[s], f * expand[s]
    linear("classifier.0", d, d // 2)
    linear("classifier.3", d // 2, d // 4)
    linear("classifier.6", d // 4, classes)
    return {k: v.astype(np.float32) for k, v in sd.items()}


# --- shared compiled models -----------------------------------------------------------

def _jitted(model):
    return jax.jit(lambda v, x, m: model.apply(v, x, m, train=False))


@pytest.fixture(scope="module", params=["S48", "B32"])
def fixture(request):
    with np.load(FIXTURES / f"speechformer_official_{request.param}.npz") as data:
        return request.param, {k: data[k] for k in data.files}


# unseen sizes: width 40 (features 43, cropped as the official code does), FFN 1.5x, 4 heads,
# expanding phoneme and utterance stages, and a 16 ms hop, where flooring durations (official)
# gives other merges than rounding. Row 1 of the batch is padded.
UNSEEN = dict(sd=dict(seed=1, width=40, ffn=60, num_layers=(1, 1, 1, 1), expand=(2, 1, 3),
                      classes=3, pe_rows=2000),
              heads=4, hop=0.016, feats=43, lengths=(230, 170))


@pytest.fixture(scope="module")
def unseen():
    """``(state_dict, model, variables, jitted apply, feats, mask)`` of ``UNSEEN``."""
    sd = random_state_dict(**UNSEEN["sd"])
    model, variables = from_speechformer_official(sd, num_heads=UNSEEN["heads"], hop=UNSEEN["hop"])
    lengths = np.asarray(UNSEEN["lengths"])
    feats = np.random.default_rng(0).standard_normal((2, lengths.max(), UNSEEN["feats"]))
    mask = np.arange(lengths.max())[None] < lengths[:, None]
    feats = (feats * mask[..., None]).astype(np.float32)
    return sd, model, variables, _jitted(model), feats, mask


def _assert_logits(got, want, err_msg=""):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6, err_msg=err_msg)


# --- parity ---------------------------------------------------------------------------

def test_numpy_port_reproduces_the_official_fixtures(fixture):
    name, data = fixture
    sd = {k[len(PREFIX):]: v for k, v in data.items() if k.startswith(PREFIX)}
    for x, want in zip(data["x"], data["logits"], strict=True):
        _assert_logits(official_logits(sd, x), want, name)


def test_converted_model_reproduces_the_official_fixtures(fixture):
    name, data = fixture
    model, variables = from_speechformer_official(data, prefix=PREFIX)
    x = data["x"]
    with jax.default_matmul_precision("highest"):
        got = _jitted(model)(variables, x, np.ones(x.shape[:2], bool))
    _assert_logits(got, data["logits"], name)


def test_converted_model_matches_the_port_on_unseen_shapes_and_padding(unseen):
    sd, model, variables, apply, feats, mask = unseen
    with jax.default_matmul_precision("highest"):
        got = apply(variables, feats, mask)
    for row, length in enumerate(UNSEEN["lengths"]):  # the official model sees it unpadded
        want = official_logits(sd, feats[row, :length], UNSEEN["heads"], UNSEEN["hop"])
        _assert_logits(got[row], want, f"row {row}")


def test_converter_infers_the_architecture(unseen):
    _, model, variables, *_ = unseen
    cfg = model.cfg
    assert (cfg.num_layers, cfg.expand, cfg.num_heads, cfg.ffn_ratio, cfg.pe_max_len) == (
        (1, 1, 1, 1), (2, 1, 3), 4, 1.5, 2000)
    assert model.num_classes == 3 and cfg.input_dim_proj is None
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 100, 43)),
                            jnp.ones((1, 100), bool))
    structure = lambda tree: jax.tree_util.tree_map(jnp.shape, tree)
    assert structure(shapes) == structure(variables)
    assert variables[PE_COLLECTION][PE_NAME].shape == (2000, 40)


def test_parameter_counts_equal_the_official_ones(fixture):
    _, data = fixture
    model, variables = from_speechformer_official(data, prefix=PREFIX)
    official = sum(v.size for k, v in data.items()
                   if k.startswith(PREFIX) and not k.endswith(".position"))
    assert count_params(variables["params"]) == official  # the frozen table is no parameter


# --- errors ---------------------------------------------------------------------------

def _s48():
    with np.load(FIXTURES / "speechformer_official_S48.npz") as data:
        return {k[len(PREFIX):]: data[k] for k in data.files if k.startswith(PREFIX)}


def test_unknown_name_raises_naming_it():
    sd = _s48()
    sd["layers.2.layers.0.attention.rel_bias"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"layers\.2\.layers\.0\.attention\.rel_bias"):
        from_speechformer_official(sd)


def test_wrong_shape_raises_naming_it():
    sd = _s48()
    sd["layers.4.layers.3.fc2.weight"] = np.zeros((48, 20), np.float32)
    with pytest.raises(ValueError, match=r"layers\.4\.layers\.3\.fc2\.weight.*\(48, 20\)"):
        from_speechformer_official(sd)
    with pytest.raises(ValueError, match=r"classifier\.6\.weight"):
        from_speechformer_official(_s48(), num_classes=7)


# --- the converted model in the rest of the project ------------------------------------

def test_hrf_expansion_and_merge_keep_the_converted_function(unseen):
    _, model, variables, apply, feats, mask = unseen
    grown = expand_hrf(variables, jax.random.PRNGKey(0), ratio=2)
    hrf_model = SpeechFormer(model.cfg, model.num_classes, HRFSpec(ratio=2))
    with jax.default_matmul_precision("highest"):
        want = np.asarray(apply(variables, feats, mask))
        _assert_logits(_jitted(hrf_model)(grown, feats, mask), want)
        merged = merge_hrf(grown)
        _assert_logits(apply(merged, feats, mask), want)
    np.testing.assert_array_equal(merged[PE_COLLECTION][PE_NAME], variables[PE_COLLECTION][PE_NAME])


def test_converted_model_trains_past_the_official_table():
    # one step of the project's train step on 2100 frames, beyond the table's 2000 rows (those
    # frames get no encoding); the table rides in the train state's batch_stats, unchanged.
    # A small model without dropout: the backward pass dominates compile time, and dropout's
    # random bits only add to it (attention-weight dropout has its own tests)
    sd = random_state_dict(seed=3, width=16, ffn=8, num_layers=(1, 0, 0, 1), expand=(1, 2, 1),
                           classes=4, pe_rows=2000)
    model, variables = from_speechformer_official(sd)
    cfg = dataclasses.replace(model.cfg, dropout=0.0, attention_dropout=0.0, head_dropout=0.0)
    model = SpeechFormer(cfg, model.num_classes)
    copy = jax.tree_util.tree_map(jnp.array, variables)  # the step donates its state
    tx = optax.adamw(1e-3)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=copy["params"],
                       batch_stats=copy[PE_COLLECTION], opt_state=tx.init(copy["params"]),
                       rng=jax.random.PRNGKey(0))
    parallel = DataParallel(jax.devices()[:1])
    feats = np.random.default_rng(1).standard_normal((2, 2100, 16)).astype(np.float32)
    batch = parallel.put_batch({"feats": feats, "mask": np.ones((2, 2100), bool),
                                "label": np.array([0, 2], np.int32)})
    new, stats = make_train_step(model, tx, parallel)(parallel.replicate(state), batch)
    assert np.isfinite(float(stats["loss"]))
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()),
                                   new.params, variables["params"])
    assert all(np.isfinite(m) and m > 0 for m in jax.tree_util.tree_leaves(moved))
    np.testing.assert_array_equal(new.batch_stats[PE_NAME], variables[PE_COLLECTION][PE_NAME])


def test_reference_preset_draws_as_the_official_code_and_keeps_the_parameter_tree():
    kw = dict(num_classes=4, num_layers=(2, 0, 0, 0), input_dim_proj=None)
    model = build_model("speechformer", "light", reference=True, **kw)
    x, mask = jnp.ones((1, 100, 16)), jnp.ones((1, 100), bool)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x, mask)
    default = jax.eval_shape(build_model("speechformer", "light", **kw).init,
                             jax.random.PRNGKey(0), x, mask)
    structure = lambda tree: jax.tree_util.tree_map(jnp.shape, tree)
    assert set(default) == {"params"}  # the default model has no table
    assert structure(default["params"]) == structure(variables["params"])
    bound = lambda fan_in, fan_out: np.sqrt(6 / (fan_in + fan_out))  # xavier-uniform
    drawn = lambda a, b: 0.9 < float(jnp.abs(a).max()) / b <= 1
    assert drawn(variables[PE_COLLECTION][PE_NAME], bound(2000, 16))
    layer = variables["params"]["stage_0_layer_0"]
    assert drawn(layer["attn"]["query"]["kernel"], bound(16, 48))  # fans of the fused qkv
    biases = jnp.concatenate([layer["attn"][n]["bias"] for n in ("query", "key", "value")])
    assert drawn(biases, 1 / np.sqrt(16))  # torch's bias init
    other = variables["params"]["stage_0_layer_1"]["attn"]["query"]["kernel"]
    assert not np.allclose(other, layer["attn"]["query"]["kernel"])  # each layer its own draw
    assert drawn(variables["params"]["head_0"]["kernel"], 1 / np.sqrt(16))  # nn.Linear
