"""The reference presets export: each backbone's ``reference=True`` model with random
variables converts to ONNX (fixed length, log-Mel input) and ONNX Runtime gives JAX's logits,
for a full and a shorter utterance (the graph masks the padding)."""

import jax
import numpy as np
import pytest
from models_testutil import FEAT_DIM, compiled, inputs, random_variables, rel_err

from hrf_jax.export.graph import InputSpec, graph_fn
from hrf_jax.export.onnx import to_onnx
from hrf_jax.models import BACKBONES

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")

FRAMES = 200  # 2 s at 10 ms: two SpeechFormer utterance tokens


@pytest.mark.parametrize("backbone", BACKBONES)
def test_reference_preset_exports_to_onnx_with_parity(backbone):
    model, _ = compiled(backbone, "light", reference=True)
    feats, mask = inputs(1, FRAMES)
    variables = jax.tree_util.tree_map(np.asarray, random_variables(model, feats, mask))
    fn = graph_fn(model, variables, {"feature_dim": FEAT_DIM}, frontend=False)
    data, _ = to_onnx(fn, InputSpec(False, FRAMES, FEAT_DIM))
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for length in (FRAMES, 150):
        signal = np.where(np.arange(FRAMES)[None, :, None] < length, feats, 0.0)
        signal = signal.astype(np.float32)
        got = session.run(None, {names[0]: signal, names[1]: np.asarray([length], np.int32)})[0]
        with jax.default_matmul_precision("highest"):
            want = np.asarray(fn(signal, np.asarray([length], np.int32)))
        assert rel_err(got, want) <= 1e-4, (backbone, length)
