"""LiteRT conversion: ``jax2tf`` -> ``tf.function`` -> ``TFLiteConverter``, built-in ops only.

Quantization: ``fp16`` weights, ``int8-dynamic`` weights with activations quantized at run time,
or full ``int8`` calibrated on a representative dataset (float I/O, float where masking needs it).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from hrf_jax.export import QUANTIZE
from hrf_jax.export.graph import InputSpec

# Attention masks fill padded keys with a huge negative (jax.nn.dot_product_attention:
# -0.7 * float32 max; local_attention: float32 min) before the softmax.
MASK_FILL = 1e30


def to_tflite(fn: Callable, spec: InputSpec, quantize: str = "none",
              representative: Iterable[tuple[np.ndarray, np.ndarray]] | None = None
              ) -> tuple[bytes, dict[str, Any]]:
    """LiteRT flatbuffer of ``fn(signal, length)`` and notes on the conversion.

    ``representative``: ``(signal, length)`` pairs to calibrate full ``int8`` with.
    """
    import tensorflow as tf
    from jax.experimental import jax2tf

    if spec.length is None:
        raise ValueError("LiteRT export supports a fixed time axis only (use --seconds)")
    if quantize not in QUANTIZE:
        raise ValueError(f"unknown quantization {quantize!r}; choose from {QUANTIZE}")
    tf_fn = tf.function(
        jax2tf.convert(fn, with_gradient=False),
        input_signature=[tf.TensorSpec(spec.shape, tf.float32, name="signal"),
                         tf.TensorSpec((1,), tf.int32, name="length")],
        autograph=False)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([tf_fn.get_concrete_function()],
                                                           tf_fn)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        conv.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if representative is None:
            raise ValueError("int8 quantization needs a representative dataset")

        def gen():
            for signal, length in representative:
                yield [signal.astype(np.float32), np.asarray(length, np.int32)]

        conv.representative_dataset = gen
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                          tf.lite.OpsSet.TFLITE_BUILTINS]
        return _full_int8(conv)
    return conv.convert(), {"ops": "TFLITE_BUILTINS"}


def _full_int8(conv: Any) -> tuple[bytes, dict[str, Any]]:
    """Full-integer model with float I/O, float only where masking needs it.

    A plain int8 conversion writes a model that aborts the interpreter in ``ADD::Prepare``
    (``QuantizeMultiplierSmallerThanOneExp``, an output multiplier of ~1e-43): SELECT_V2
    needs one scale for its operands and result, so the calibrated range of the masked
    scores (down to the ~-2.4e38 fill) is pushed onto the ``scores + bias`` ADD feeding it,
    and an int8 SOFTMAX over that range loses all resolution. So: calibrate, set each such
    select's range to its real data input's range, then quantize with the select and the
    ops reading it (the softmax) kept in float, so masking stays exact. Uses the private
    ``_experimental_calibrate_only`` and ``mlir_quantize``, as TensorFlow's own
    ``QuantizationDebugger`` does.
    """
    from tensorflow.lite.python.convert import mlir_quantize
    from tensorflow.lite.tools import flatbuffer_utils as fb

    conv._experimental_calibrate_only = True
    model = fb.convert_bytearray_to_object(bytearray(conv.convert()))
    keep_float = _unfill_mask_ranges(model, fb)
    blob = mlir_quantize(bytes(fb.convert_object_to_bytearray(model)),
                         denylisted_nodes=keep_float)
    return blob, {"ops": "TFLITE_BUILTINS_INT8 + TFLITE_BUILTINS (float fallback)",
                  "io": "float32", "float_nodes": len(keep_float)}


def _unfill_mask_ranges(model: Any, fb: Any) -> list[str]:
    """Clips the calibrated range of mask-fill selects in ``model`` (a ``ModelT``, edited in
    place) to their data input's range; returns the node names to keep in float."""
    keep: list[str] = []
    for graph in model.subgraphs:
        readers: dict[int, list] = {}
        for op in graph.operators:
            for t in op.inputs:
                readers.setdefault(int(t), []).append(op)
        for op in graph.operators:
            if fb.opcode_to_name(model, op.opcodeIndex) not in ("SELECT", "SELECT_V2"):
                continue
            out = graph.tensors[op.outputs[0]]
            q = out.quantization
            if q is None or q.min is None or not len(q.min) or \
                    max(-float(np.min(q.min)), float(np.max(q.max))) < MASK_FILL:
                continue
            # the non-constant value operands: calibrated activations
            data = [graph.tensors[t].quantization for t in op.inputs[1:]
                    if model.buffers[graph.tensors[t].buffer].data is None]
            data = [d for d in data if d is not None and d.min is not None and len(d.min)]
            if not data:
                continue
            q.min = np.asarray([min(float(np.min(d.min)) for d in data)], np.float32)
            q.max = np.asarray([max(float(np.max(d.max)) for d in data)], np.float32)
            keep.append(out.name.decode())
            keep += [graph.tensors[r.outputs[0]].name.decode()
                     for r in readers.get(int(op.outputs[0]), [])]
    return keep


def probe(path: pathlib.Path) -> None:
    """Loads and runs ``path`` once in a child process: some full-integer LiteRT models
    abort the interpreter (SIGABRT) when loaded, which would kill this process."""
    code = ("import numpy as np\n"
            "from hrf_jax_runtime import open_backend\n"
            f"run = open_backend({str(path)!r})\n"
            "run(np.zeros(tuple(run._signal['shape']), np.float32), np.ones((1,), np.int32))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        path.unlink(missing_ok=True)
        raise ValueError(
            f"the full-integer (int8) LiteRT model converted but the interpreter failed to run "
            f"it (exit status {proc.returncode}: {proc.stderr.strip()[-300:]!r}); use "
            f"--quantize int8-dynamic or fp16")
