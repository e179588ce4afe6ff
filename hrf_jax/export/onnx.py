"""ONNX conversion through jax2onnx, with a fixed or a symbolic time axis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from hrf_jax.export import onnx_compat
from hrf_jax.export.graph import InputSpec

# Shortest input of a dynamic-time ONNX model, in frames: the backbones that export one
# subsample by two 3x3 stride-2 VALID convs (7 frames or more give a frame); jax needs the
# bound to decide the subsampled shapes, and the runtime zero-pads shorter input (masked).
MIN_DYNAMIC_FRAMES = 16
DYNAMIC_TIME_BACKBONES = ("conformer", "convtransformer")


def to_onnx(fn: Callable, spec: InputSpec) -> tuple[bytes, dict[str, Any]]:
    """ONNX model bytes of ``fn(signal, length)`` (a symbolic ``T`` when ``spec.length`` is
    ``None``) and notes on the conversion."""
    signal: Any = spec.shape
    if spec.length is None:
        (t,) = jax.export.symbolic_shape("T", constraints=(f"T >= {MIN_DYNAMIC_FRAMES}",))
        signal = jax.ShapeDtypeStruct((1, t, spec.feature_dim), jnp.float32)
    try:
        model = onnx_compat.to_onnx(fn, [signal, jax.ShapeDtypeStruct((1,), jnp.int32)],
                                    model_name="hrf_jax_ser", input_names=["signal", "length"],
                                    output_names=["logits"])
    except Exception as exc:
        if spec.length is not None:
            raise
        # SpeechFormer's token merging pads T to a multiple of the merge size and reshapes
        # with -1: jax cannot prove the symbolic size divides (InconclusiveDimensionOperation)
        raise ValueError(f"jax2onnx could not export a symbolic time axis for this model "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                         f"--dynamic-time works for ONNX with log-Mel input and the "
                         f"{' / '.join(DYNAMIC_TIME_BACKBONES)} backbones; export with a fixed "
                         f"--seconds instead") from exc
    return model.SerializeToString(), {"opset": int(model.opset_import[0].version)}
