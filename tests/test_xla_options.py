"""XLA compiler options per model: which steps get them, and that they change the compiled
program but not what a train step computes."""

import jax
import numpy as np
import optax
import pytest

from hrf_jax.models import build_model
from hrf_jax.train import DataParallel, create_state, make_train_step
from hrf_jax.xla_options import YNN_DOTS_ONLY, _known, train_compiler_options

KNOWN = _known(tuple(sorted(YNN_DOTS_ONLY.items())))


class _Asks:
    def __init__(self, options):
        self.xla_cpu_train_options = options


def test_only_models_that_ask_get_options_and_only_on_cpu():
    speechformer = build_model("speechformer", "light", num_classes=4)
    assert train_compiler_options(speechformer, "gpu") == {}
    assert train_compiler_options(speechformer, "cpu") == (YNN_DOTS_ONLY if KNOWN else {})
    for backbone in ("conformer", "convtransformer"):
        assert train_compiler_options(build_model(backbone, "light", num_classes=4), "cpu") == {}


def test_options_this_jaxlib_does_not_know_fall_back_to_xla_defaults():
    assert train_compiler_options(_Asks({"xla_cpu_no_such_option": "1"}), "cpu") == {}
    bad_value = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_NO_SUCH_KIND"}
    assert train_compiler_options(_Asks(bad_value), "cpu") == {}


def test_options_change_the_program_not_the_step():
    """The SpeechFormer step with its options and the same step with XLA's defaults: equal
    loss and parameters after a step; with the options, fewer YNNPACK fusions."""
    if not KNOWN:
        pytest.skip("this jaxlib has no YNNPACK fusion option")
    model = build_model("speechformer", "light", num_classes=4, dropout=0.0, head_dropout=0.0,
                        num_layers=(1, 1, 1, 1))
    rng = np.random.default_rng(0)  # 100 frames, ragged: every stage has a real token
    batch = {"feats": rng.standard_normal((8, 100, 16)).astype(np.float32),
             "mask": np.arange(100)[None] < rng.integers(50, 101, (8, 1)),
             "label": (np.arange(8) % 4).astype(np.int32)}
    parallel = DataParallel()
    tx = optax.sgd(0.1, momentum=0.9)  # AdamW would magnify float noise of near-zero grads
    placed = parallel.put_batch(batch)
    fresh = lambda: create_state(model, tx, jax.random.PRNGKey(0), batch["feats"], batch["mask"])
    tuned = make_train_step(model, tx, parallel)
    plain = make_train_step(model, tx, parallel, compiler_options={})
    texts, results = [], []
    for step in (tuned, plain):
        compiled = step.lower(fresh(), placed).compile()
        state, stats = compiled(fresh(), placed)
        texts.append(compiled.as_text())
        results.append((float(stats["loss"]), state.params))
    assert texts[0].count("__ynn_fusion") < texts[1].count("__ynn_fusion")
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_the_benchmark_measures_the_options_the_library_applies():
    from benchmarks.compiler_options import compiler_options

    assert compiler_options("dots") == YNN_DOTS_ONLY
    assert compiler_options("default") == {}
