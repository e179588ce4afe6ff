"""XLA compiler options per model: which steps get them, and that they change the compiled
program but not what a train or eval step computes."""

import jax
import numpy as np
import optax
import pytest

from hrf_jax.models import build_model
from hrf_jax.train import DataParallel, create_state, make_eval_step, make_train_step
from hrf_jax.xla_options import (
    NO_YNN,
    YNN_DOTS_ONLY,
    YNN_REDUCE_ONLY,
    _known,
    eval_compiler_options,
    train_compiler_options,
)

KNOWN = _known(tuple(sorted(YNN_DOTS_ONLY.items())))
needs_ynn_option = pytest.mark.skipif(not KNOWN, reason="this jaxlib has no YNNPACK option")


class _Asks:
    def __init__(self, options):
        self.xla_cpu_train_options = self.xla_cpu_eval_options = options


def _light(backbone):
    return build_model(backbone, "light", num_classes=4)


def test_only_models_that_ask_get_options_and_only_on_cpu():
    speechformer = _light("speechformer")
    assert train_compiler_options(speechformer, "gpu") == {}
    assert eval_compiler_options(speechformer, "gpu") == {}
    assert train_compiler_options(speechformer, "cpu") == (YNN_DOTS_ONLY if KNOWN else {})
    for backbone in ("conformer", "convtransformer"):
        assert train_compiler_options(_light(backbone), "cpu") == {}
    wanted = {"speechformer": NO_YNN, "conformer": YNN_REDUCE_ONLY,
              "convtransformer": YNN_REDUCE_ONLY}
    for backbone, options in wanted.items():
        assert eval_compiler_options(_light(backbone), "cpu") == (options if KNOWN else {})
    # one utterance: the SpeechFormer's own choice, the others their eval options
    wanted["speechformer"] = YNN_REDUCE_ONLY
    for backbone, options in wanted.items():
        got = eval_compiler_options(_light(backbone), "cpu", utterance=True)
        assert got == (options if KNOWN else {})
    assert eval_compiler_options(_light("speechformer"), "gpu", utterance=True) == {}


def test_options_this_jaxlib_does_not_know_fall_back_to_xla_defaults():
    assert train_compiler_options(_Asks({"xla_cpu_no_such_option": "1"}), "cpu") == {}
    bad_value = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_NO_SUCH_KIND"}
    assert train_compiler_options(_Asks(bad_value), "cpu") == {}
    assert eval_compiler_options(_Asks(bad_value), "cpu") == {}


@needs_ynn_option
def test_options_change_the_program_not_the_step():
    """The SpeechFormer step with its options and the same step with XLA's defaults: equal
    loss and parameters after a step; with the options, fewer YNNPACK fusions."""
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


@needs_ynn_option
@pytest.mark.parametrize("backbone", ["speechformer", "conformer", "convtransformer"])
def test_eval_options_change_the_program_not_the_probabilities(backbone):
    """Each model's eval step with its options and with XLA's defaults, on a ragged batch
    and on one utterance: the same probabilities; with them, fewer YNNPACK fusions."""
    model = build_model(backbone, "light", num_classes=4, num_layers=(1, 1, 1, 1)
                        if backbone == "speechformer" else 1)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((6, 100, 16)).astype(np.float32)
    mask = np.arange(100)[None] < np.array([100, 31, 77, 100, 50, 64])[:, None]
    variables = model.init(jax.random.PRNGKey(0), feats, mask)
    parallel = DataParallel()
    steps = [make_eval_step(model, parallel), make_eval_step(model, parallel, compiler_options={})]
    for x, m in ((feats, mask), (feats[1:2], mask[1:2])):
        x, m = parallel.put_batch({"feats": x, "mask": m}).values()
        stats = variables.get("batch_stats", {})
        compiled = [s.lower(variables["params"], stats, x, m).compile() for s in steps]
        tuned_text, plain_text = (c.as_text() for c in compiled)
        assert tuned_text.count("__ynn_fusion") < plain_text.count("__ynn_fusion")
        tuned, plain = (c(variables["params"], stats, x, m) for c in compiled)
        np.testing.assert_allclose(tuned, plain, rtol=1e-5, atol=1e-6)


def test_the_benchmark_measures_the_options_the_library_applies():
    from benchmarks.compiler_options import compiler_options

    assert compiler_options("dots") == YNN_DOTS_ONLY
    assert compiler_options("none") == NO_YNN
    assert compiler_options("reduce") == YNN_REDUCE_ONLY
    assert compiler_options("default") == {}
