"""Merged model -> LiteRT (``.tflite``) or ONNX, with quantization, parity and a sidecar.

``export_model(fmt="tflite"|"onnx", out=FILE, workdir=RUN or checkpoint=DEPLOY_DIR)``

1. ``source``: the best checkpoint of a training workdir (or a deploy folder from
   ``hrf-jax merge``) through ``merge_hrf`` and, where the backbone has a ``fold_bn`` option
   (Conformer), ``fold_batchnorm``; the exported graph is the plain model (``fold_bn=True``);
2. ``graph``: ``graph(signal, length) -> logits`` for a batch of 1: ``signal`` is ``(1, T, F)``
   normalised log-Mel frames or, with ``frontend=True``, ``(1, N)`` raw 16 kHz mono audio with
   the log-Mel and the run's normalisation inside the graph; ``length`` ``(1,)`` int32 counts
   the valid frames / samples, everything after it is masked;
3. ``litert`` (``jax2tf`` -> ``TFLiteConverter``, built-in ops only) or ``onnx`` (``jax2onnx``,
   with the workarounds of ``onnx_compat``);
4. ``parity``: the exported model against the JAX model it came from (the HRF model of the
   checkpoint, before merging and folding); a float32 export off by more than
   ``FP32_TOLERANCE`` fails, quantized exports report WA/UA against float32 JAX;
5. ``pipeline``: writes ``FILE`` and the sidecar ``FILE.json`` that ``hrf_jax_runtime`` reads.

This module itself imports nothing heavy, so the CLI reads the choices below without JAX.
"""

from __future__ import annotations

from hrf_jax.lazy import lazy_exports

FORMATS = ("tflite", "onnx")
QUANTIZE = ("none", "fp16", "int8-dynamic", "int8")
FP32_TOLERANCE = 1e-4

# public name -> module that defines it, imported on first use (PEP 562)
_LAZY = {
    "export_model": "hrf_jax.export.pipeline",
    "ParityError": "hrf_jax.export.pipeline",
    "load_source": "hrf_jax.export.source",
    "Source": "hrf_jax.export.source",
    "graph_fn": "hrf_jax.export.graph",
    "input_spec": "hrf_jax.export.graph",
    "MIN_DYNAMIC_FRAMES": "hrf_jax.export.onnx",
}

__all__ = ["FORMATS", "FP32_TOLERANCE", "QUANTIZE", *sorted(_LAZY)]


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
