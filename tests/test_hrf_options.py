"""HRF training options (issue #13): function-preserving and balanced inits, norms inside the
chain folded by the merge, HRF weight decay, per-path lr multipliers (the lr control), the
end of the cosine and the SpeechFormer recipe."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from models_testutil import compiled, inputs, random_variables, rel_err, shapes

from experiments.grids import RECIPES, apply_recipe, get_grid, recipe_overrides, run_config
from hrf_jax import HRFDense, HRFSpec, build_model, merge_hrf
from hrf_jax.config import apply_overrides, default_config, parse_lr_scale
from hrf_jax.hrf import balanced_stddevs
from hrf_jax.masking import MaskedBatchNorm
from hrf_jax.reparam import hrf_param_mask
from hrf_jax.run import model_from_config
from hrf_jax.train import (
    lr_control_scale,
    lr_scale_factors,
    make_optimizer,
    make_schedule,
)
from hrf_jax.trees import key_path

TOL = 1e-5


def paths_of(tree, keep=lambda leaf: True):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(key_path(p)) for p, leaf in flat if keep(leaf)}


# --------------------------------------------------------------------------- inits


@pytest.mark.parametrize("backbone", ["conformer", "convtransformer"])
def test_function_preserving_init_starts_as_the_plain_model(backbone):
    """Same seed: the merged HRF init is the plain init and the outputs are the plain ones."""
    # one block: the init is per layer, and a whole light model compiles 4x slower
    hrf = build_model(backbone, "light", num_classes=4, hrf_ratio=4,
                      hrf_init="function_preserving", num_layers=1)
    plain = build_model(backbone, "light", num_classes=4, num_layers=1)
    feats, mask = inputs(2, 32)
    key = jax.random.PRNGKey(3)
    with jax.default_matmul_precision("highest"):  # init's output: one program per model
        y_hrf, v_hrf = jax.jit(hrf.init_with_output)(key, feats, mask)
        y_plain, v_plain = jax.jit(plain.init_with_output)(key, feats, mask)
    assert rel_err(y_plain, y_hrf) <= TOL
    merged = merge_hrf(v_hrf)
    assert shapes(merged) == shapes(v_plain)
    hosts = paths_of(hrf_param_mask(v_hrf["params"]), bool)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(merged["params"])[0],
                            jax.tree_util.tree_leaves(v_plain["params"]), strict=True):
        name = "/".join(key_path(path))
        if name in hosts:  # folded in float32: the plain kernel up to rounding
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)
        else:  # untouched by HRF: drawn from the same key
            np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("depth", [1, 2])
def test_function_preserving_layer_of_any_depth(depth):
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8))
    key = jax.random.PRNGKey(1)
    v = HRFDense(5, hrf_ratio=2, hrf_depth=depth, hrf_init="function_preserving").init(key, x)
    plain = HRFDense(5).init(key, x)
    np.testing.assert_allclose(merge_hrf(v)["params"]["kernel"], plain["params"]["kernel"],
                               atol=1e-6)


def test_function_preserving_refuses_what_cannot_hold():
    x = jnp.ones((2, 8))
    with pytest.raises(ValueError, match="needs HRF width >= input width, got 4 < 8"):
        HRFDense(2, hrf_ratio=2, hrf_base="out", hrf_init="function_preserving").init(
            jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="batch statistics change the function"):
        HRFDense(2, hrf_ratio=2, hrf_init="function_preserving", hrf_norm="batchnorm").init(
            jax.random.PRNGKey(0), x, train=True)


def test_balanced_init_equal_factor_norms_and_the_plain_product_variance():
    d, features, depth = 64, 48, 2
    layer = HRFDense(features, hrf_ratio=4, hrf_depth=depth, hrf_init="balanced")
    params = layer.init(jax.random.PRNGKey(0), jnp.ones((1, d)))["params"]
    mats = [np.asarray(params[f"hrf_{i}"]["kernel"], np.float64) for i in range(depth)]
    mats.append(np.asarray(params["kernel"], np.float64))
    stds = balanced_stddevs(d, 4 * d, features, depth)
    sq_norms = [np.sum(m ** 2) for m in mats]
    for m, s in zip(mats, stds, strict=True):
        assert np.std(m) == pytest.approx(s, rel=0.05)
    assert max(sq_norms) / min(sq_norms) < 1.1  # equal Frobenius norms
    product = mats[0]
    for m in mats[1:]:
        product = product @ m
    assert np.var(product) == pytest.approx(1 / d, rel=0.15)  # LeCun, like the plain fc1


def test_spec_refuses_unknown_init_and_norm():
    with pytest.raises(ValueError, match="hrf_init must be one of"):
        HRFSpec(init="he")
    with pytest.raises(ValueError, match="hrf_norm must be one of"):
        HRFSpec(norm="layernorm")


def test_config_fields_reach_the_model():
    config = default_config()
    apply_overrides(config, ["--config.model.hrf_ratio=4", "--config.model.hrf_norm=scale",
                             "--config.model.hrf_init=balanced"])
    model = model_from_config(config.model, 4)
    assert (model.hrf.norm, model.hrf.init) == ("scale", "balanced")
    assert model_from_config(default_config().model, 4).hrf == HRFSpec()
    with pytest.raises(ValueError, match="config.model.hrf_norm: 'bn'"):
        apply_overrides(config, ["--config.model.hrf_norm=bn"])


# --------------------------------------------------------------------------- norms in the chain


class Block(nn.Module):
    """A BatchNorm of the model's own, then an HRF layer with a norm in its chain."""

    norm: str
    depth: int = 2
    hrf_bias: bool = True

    @nn.compact
    def __call__(self, x, mask, train=False):
        h = MaskedBatchNorm(name="bn")(x, mask, train=train)
        return HRFDense(6, hrf_ratio=3, hrf_depth=self.depth, hrf_bias=self.hrf_bias,
                        hrf_norm=self.norm, name="fc1")(h, mask, train=train)


class PlainBlock(nn.Module):
    @nn.compact
    def __call__(self, x, mask, train=False):
        return HRFDense(6, name="fc1")(MaskedBatchNorm(name="bn")(x, mask, train=train))


def randomised(model, x, mask, seed):
    """Every leaf random: params N(0, 0.5), running means N(0, 0.5), running vars U(0.5, 2)."""
    rng = np.random.default_rng(seed)
    structure = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, mask))

    def draw(path, leaf):
        if key_path(path)[-1] == "var":
            return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
        return (0.5 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, structure)


@pytest.mark.parametrize("hrf_bias", [True, False])
@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("norm", ["scale", "batchnorm"])
def test_norm_in_the_chain_merges_exactly(norm, depth, hrf_bias):
    rng = np.random.default_rng(depth)
    x = rng.standard_normal((3, 7, 5)).astype(np.float32)
    mask = np.arange(7)[None] < np.array([[7], [4], [1]])
    block = Block(norm, depth, hrf_bias)
    variables = randomised(block, x, mask, seed=depth + 10 * hrf_bias)
    merged = merge_hrf(variables)
    plain_vars = jax.eval_shape(lambda: PlainBlock().init(jax.random.PRNGKey(0), x, mask))
    assert shapes(merged) == shapes(plain_vars)  # norms and their statistics folded away
    np.testing.assert_array_equal(merged["batch_stats"]["bn"]["var"],
                                  variables["batch_stats"]["bn"]["var"])
    with jax.default_matmul_precision("highest"):
        y_hrf = block.apply(variables, x, mask)  # eval mode: running statistics
        y_plain = PlainBlock().apply(merged, x, mask)
        assert rel_err(y_hrf, y_plain) <= TOL
        jitted = jax.jit(merge_hrf)(jax.tree_util.tree_map(jnp.asarray, variables))
        assert rel_err(PlainBlock().apply(jitted, x, mask), y_hrf) <= TOL


def test_batchnorm_in_the_chain_ignores_padding():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 5)).astype(np.float32)
    mask = np.arange(6)[None] < np.array([[6], [3]])
    block = Block("batchnorm", 1)
    variables = randomised(block, x, mask, seed=0)
    noisy = np.where(mask[..., None], x, 1e3 * rng.standard_normal(x.shape)).astype(np.float32)
    (y_a, stats_a), (y_b, stats_b) = (
        block.apply(variables, v, mask, train=True, mutable=["batch_stats"]) for v in (x, noisy))
    np.testing.assert_allclose(np.asarray(y_a)[mask], np.asarray(y_b)[mask], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(stats_a), jax.tree_util.tree_leaves(stats_b),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    chain_stats = stats_a["batch_stats"]["fc1"]["hrf_norm_0"]
    assert not np.allclose(chain_stats["mean"], variables["batch_stats"]["fc1"]["hrf_norm_0"]
                           ["mean"])  # updated in train mode


def test_batchnorm_in_the_chain_needs_train_and_its_statistics():
    x = jnp.ones((2, 4))
    layer = HRFDense(3, hrf_ratio=2, hrf_norm="batchnorm")
    with pytest.raises(ValueError, match="needs the caller to pass train="):
        layer.init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="needs use_bias=True"):
        HRFDense(3, use_bias=False, hrf_ratio=2, hrf_norm="batchnorm").init(
            jax.random.PRNGKey(0), x, train=False)
    variables = layer.init(jax.random.PRNGKey(0), x, train=False)
    with pytest.raises(ValueError, match="needs the whole variables dict"):
        merge_hrf(variables["params"])
    with pytest.raises(ValueError, match="batch_stats/hrf_norm_0 with 'mean' and 'var'"):
        merge_hrf({"params": variables["params"]})
    bad = {**variables, "params": {**variables["params"], "hrf_norm_0": {"scale": jnp.ones(3)}}}
    with pytest.raises(ValueError, match=r"params/hrf_norm_0/scale has shape \(3,\), expected"):
        merge_hrf(bad)
    # the backbones pass train and mask on the FFN targets only
    model = build_model("convtransformer", "light", num_classes=4, hrf_ratio=2,
                        hrf_norm="batchnorm", hrf_targets=("ffn", "head"))
    feats, mask = inputs(1, 16)
    with pytest.raises(ValueError, match="FFN targets 'ffn' and 'ffn2' only"):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), feats, mask))


@pytest.mark.parametrize("backbone", ["conformer", "convtransformer"])
def test_batchnorm_norm_trains_and_merges_exactly_in_a_model(backbone):
    """The FFN chain's BatchNorm learns statistics of real tokens only while training, and
    the merged plain model gives the HRF model's eval output."""
    hrf, hrf_fn = compiled(backbone, "light", 4, "ffn", hrf_norm="batchnorm")
    plain, plain_fn = compiled(backbone, "light")
    feats, mask = inputs(2, 48)
    variables = random_variables(hrf, feats, mask)
    _, updates = hrf.apply(variables, feats, mask, train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.PRNGKey(0)})
    stats = jax.tree_util.tree_leaves_with_path(updates["batch_stats"])
    norms = [leaf for path, leaf in stats if "hrf_norm_0" in jax.tree_util.keystr(path)]
    assert norms and all(np.all(np.isfinite(leaf)) for leaf in norms)
    with jax.default_matmul_precision("highest"):
        assert rel_err(hrf_fn(variables, feats, mask),
                       plain_fn(merge_hrf(variables), feats, mask)) <= TOL


def test_scale_norm_merges_exactly_in_a_model():
    hrf, hrf_fn = compiled("convtransformer", "light", 4, hrf_norm="scale")
    plain, plain_fn = compiled("convtransformer", "light")
    feats, mask = inputs(2, 32)
    variables = random_variables(hrf, feats, mask)
    assert "hrf_norm_0" in variables["params"]["layer_0"]["ffn"]["fc1"]
    with jax.default_matmul_precision("highest"):
        assert rel_err(hrf_fn(variables, feats, mask),
                       plain_fn(merge_hrf(variables), feats, mask)) <= TOL


# --------------------------------------------------------------------------- optimizer


def toy_params():
    """An FFN whose fc1 carries an HRF chain with a scale norm, an fc2 and a LayerNorm."""
    ones = lambda *shape: jnp.ones(shape, jnp.float32)
    return {"block": {"ffn": {"fc1": {"hrf_0": {"kernel": ones(2, 4), "bias": ones(4)},
                                      "hrf_norm_0": {"scale": ones(4)},
                                      "kernel": ones(4, 3), "bias": ones(3)},
                              "fc2": {"kernel": ones(3, 2), "bias": ones(2)}},
                      "ln": {"scale": ones(2)}}}


def optimizer_config(**fields):
    config = default_config().optimizer
    config.update(fields)
    return config


def updates_after(tx, params, grads, steps=1):
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
    return updates


def test_hrf_param_mask_marks_exactly_the_hrf_layers():
    mask = hrf_param_mask(toy_params())
    assert paths_of(mask, bool) == {"block/ffn/fc1/hrf_0/kernel", "block/ffn/fc1/hrf_0/bias",
                                    "block/ffn/fc1/hrf_norm_0/scale", "block/ffn/fc1/kernel",
                                    "block/ffn/fc1/bias"}


@pytest.mark.parametrize("name", ["adamw", "sgd"])
@pytest.mark.parametrize("hrf_wd", [-1.0, 0.0, 0.05])
def test_hrf_weight_decay_applies_to_hrf_kernels_only(name, hrf_wd):
    params = toy_params()
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    config = optimizer_config(name=name, hrf_weight_decay=hrf_wd, weight_decay=0.01, lr=0.1,
                              warmup_fraction=0.0, momentum=0.0)
    # step 2: AdamW's warm-up starts at lr 0; zero gradients leave only the decay
    updates = updates_after(make_optimizer(config, 1000), params, zero, steps=2)
    lr = float(make_schedule(config, 1000)(1))
    expect_hrf = 0.01 if hrf_wd < 0 else hrf_wd
    flat = dict(zip(sorted(paths_of(params)), jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda u: float(u.ravel()[0]), updates)), strict=True))
    for path, value in flat.items():
        hrf = path.startswith("block/ffn/fc1")
        decay = (expect_hrf if hrf else 0.01) if path.endswith("kernel") else 0.0
        assert value == pytest.approx(-lr * decay, rel=1e-5, abs=1e-12), path


def test_default_optimizer_has_the_earlier_state_so_checkpoints_resume():
    params = toy_params()
    config = default_config().optimizer
    decay_mask = lambda p: jax.tree_util.tree_map(lambda a: a.ndim >= 2, p)
    earlier = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        make_schedule(config, 100), weight_decay=0.01, mask=decay_mask))
    assert (jax.tree_util.tree_structure(make_optimizer(config, 100).init(params))
            == jax.tree_util.tree_structure(earlier.init(params)))


def test_cosine_end_fraction():
    sgd = optimizer_config(name="sgd")
    assert float(make_schedule(sgd, 100)(100)) == 0.0  # as before the field existed
    assert float(make_schedule(default_config().optimizer, 100)(100)) == pytest.approx(1e-5)
    sgd.end_lr_fraction = 0.01
    assert float(make_schedule(sgd, 100)(0)) == pytest.approx(1e-3)
    assert float(make_schedule(sgd, 100)(100)) == pytest.approx(1e-5)


def test_lr_scale_parses_from_the_command_line():
    config = default_config()
    apply_overrides(config, ["--config.optimizer.lr_scale=*/fc1/*=5, */fc2/kernel=0.5"])
    assert parse_lr_scale(config.optimizer.lr_scale) == [("*/fc1/*", 5.0),
                                                         ("*/fc2/kernel", 0.5)]
    assert parse_lr_scale("") == [] and lr_control_scale() == "*/fc1/*=5"
    assert lr_control_scale(ratio=8) == "*/fc1/*=9" and lr_control_scale(k=2.5) == "*/fc1/*=2.5"
    for bad in ("*/fc1/*", "=5", "*/fc1/*=-1", "*/fc1/*=x", "*/fc1/*=inf"):
        with pytest.raises(ValueError, match="config.optimizer.lr_scale"):
            apply_overrides(default_config(), [f"--config.optimizer.lr_scale={bad}"])


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_lr_scale_multiplies_exactly_the_matching_updates(name):
    params = toy_params()
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    grads = jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(k, a.shape) for k, a in zip(keys, leaves, strict=True)])
    base = optimizer_config(name=name, warmup_fraction=0.0)
    scaled = optimizer_config(name=name, warmup_fraction=0.0, lr_scale="*/fc1/*=5")
    u_base, u_scaled = (updates_after(make_optimizer(c, 100), params, grads, steps=2)
                        for c in (base, scaled))
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(u_base)[0],
                            jax.tree_util.tree_leaves(u_scaled), strict=True):
        factor = 5.0 if "/fc1/" in "/".join(key_path(path)) else 1.0
        np.testing.assert_allclose(b, factor * a, rtol=1e-6, err_msg=str(path))
    with pytest.raises(ValueError, match=r"\['\*/fc9/\*'\] match no parameter path"):
        make_optimizer(optimizer_config(lr_scale="*/fc9/*=2"), 100).init(params)


@pytest.mark.parametrize("backbone", ["conformer", "speechformer", "convtransformer"])
def test_lr_control_reaches_the_ffn_first_layers_and_nothing_else(backbone):
    model = build_model(backbone, "light", num_classes=4)
    feats, mask = inputs(1, 100)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), feats, mask))["params"]
    factors = lr_scale_factors(params, parse_lr_scale(lr_control_scale(ratio=4)))
    scaled = paths_of(factors, lambda f: f != 1.0)
    assert set(jax.tree_util.tree_leaves(factors)) == {1.0, 5.0}
    expected = {p for p in paths_of(params) if p.split("/")[-2:-1] == ["fc1"]}
    assert scaled == expected
    # every FFN's first linear (Conformer: both half-step FFNs), kernel and bias
    assert all("ffn" in p.split("/")[-3] for p in scaled)
    layers = {"conformer": 12, "speechformer": 12, "convtransformer": 4}[backbone]
    assert len(scaled) == 2 * layers


# --------------------------------------------------------------------------- recipe


def test_speechformer_official_recipe():
    config = apply_recipe(default_config(), "speechformer_official")
    opt = config.optimizer
    assert (opt.name, opt.lr, opt.momentum, opt.weight_decay, opt.clip_norm,
            config.train.batch_size) == ("sgd", 1e-3, 0.9, 0.0, 0.0, 32)
    assert float(make_schedule(opt, 50)(50)) == pytest.approx(1e-5)  # cosine to lr / 100
    params = toy_params()
    grads = jax.tree_util.tree_map(lambda p: 100.0 * jnp.ones_like(p), params)
    # no clipping, no decay: the first SGD step is -lr * gradient on every leaf
    for u in jax.tree_util.tree_leaves(updates_after(make_optimizer(opt, 50), params, grads)):
        np.testing.assert_allclose(u, -0.1, rtol=1e-6)
    assert recipe_overrides("speechformer_official")[0] == "--config.optimizer.name=sgd"
    assert set(RECIPES) == {"speechformer_official"}
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_overrides("paper")


@pytest.mark.parametrize("control,reference,changed", [
    ("light_lr5", "light", {"optimizer.lr_scale": "*/fc1/*=5"}),
    ("light_hrf4_fp", "light_hrf4", {"model.hrf_init": "function_preserving"}),
    ("light_hrf4_nowd", "light_hrf4", {"optimizer.hrf_weight_decay": 0.0}),
    ("light_hrf4_scale", "light_hrf4", {"model.hrf_norm": "scale"}),
])
def test_control_variants_differ_from_their_reference_in_one_field(control, reference, changed):
    grid = get_grid("iemocap_speechformer")
    flat = lambda v: {f"{section}.{k}": value for section, fields
                      in run_config(grid, "speechformer", v, 0, 1).to_dict().items()
                      for k, value in fields.items()}
    a, b = flat(reference), flat(control)
    assert {k: b[k] for k in a if a[k] != b[k]} == changed
