"""``export_model``: load, convert, check parity, write the model file and its JSON sidecar."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any

import hrf_jax_runtime.model as runtime
from hrf_jax.export import FORMATS, FP32_TOLERANCE, QUANTIZE
from hrf_jax.export.extras import require_extras
from hrf_jax.export.graph import InputSpec, graph_fn, input_spec, mel_settings
from hrf_jax.export.litert import probe, to_tflite
from hrf_jax.export.onnx import MIN_DYNAMIC_FRAMES, to_onnx
from hrf_jax.export.parity import compare, evaluate_split, parity_inputs, reference
from hrf_jax.export.source import Source, load_source
from hrf_jax.reparam import count_params


class ParityError(RuntimeError):
    """The exported float32 model does not reproduce the JAX model."""


def _check_arguments(fmt: str, out: pathlib.Path, dynamic_time: bool, quantize: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    if quantize not in QUANTIZE:
        raise ValueError(f"unknown quantization {quantize!r}; choose from {QUANTIZE}")
    if fmt == "onnx" and quantize != "none":
        raise ValueError("--quantize applies to LiteRT only; ONNX exports are float32")
    if fmt == "tflite" and dynamic_time:
        raise ValueError("LiteRT export supports a fixed time axis only: drop --dynamic-time "
                         "(the runtime pads/crops to --seconds)")
    if out.suffix != f".{fmt}":
        raise ValueError(f"--out {out} should end in .{fmt}")


def export_model(fmt: str, out: str | os.PathLike, *, workdir: str | os.PathLike | None = None,
                 checkpoint: str | os.PathLike | None = None, frontend: bool = False,
                 seconds: float = 3.0, dynamic_time: bool = False, quantize: str = "none",
                 num_check: int = 16, eval_limit: int = 100, calibration: int = 32,
                 tolerance: float = FP32_TOLERANCE) -> dict[str, Any]:
    """Exports, checks parity and writes ``out`` and its sidecar; returns the sidecar dict.

    A float32 export off by more than ``tolerance`` raises ``ParityError`` and writes nothing;
    a missing optional package raises ``ModuleNotFoundError`` before the checkpoint is read.
    """
    out = pathlib.Path(out)
    _check_arguments(fmt, out, dynamic_time, quantize)
    require_extras(fmt)
    src = load_source(workdir, checkpoint)
    spec = input_spec(src.info, frontend, seconds, dynamic_time)
    fn = graph_fn(src.model, src.variables, src.info, frontend)

    t0 = time.perf_counter()
    if fmt == "tflite":
        rep = parity_inputs(src, spec, "train", calibration) if quantize == "int8" else None
        blob, notes = to_tflite(fn, spec, quantize, rep)
    else:
        blob, notes = to_onnx(fn, spec)
    notes["seconds"] = round(time.perf_counter() - t0, 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")  # same suffix: the runtime needs it
    tmp.write_bytes(blob)
    try:
        if quantize == "int8":
            probe(tmp)
        parity = _parity(src, spec, runtime.open_backend(tmp), quantize, num_check,
                         eval_limit)
        if quantize == "none":
            parity["tolerance"] = tolerance
            diff = parity["max_abs_logit_diff"]
            if diff is None or not diff <= tolerance:
                raise ParityError(
                    f"{fmt} export of {src.path} fails float32 parity: max |logit diff| {diff} "
                    f"> {tolerance} over {parity['utterances']} utterances (argmax agreement "
                    f"{parity['argmax_agreement']}); nothing written to {out}. Rerun with "
                    f"--tolerance to inspect, or report the model config.")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    meta = _sidecar(src, spec, fmt, out, seconds, quantize, notes, parity)
    runtime.sidecar_path(out).write_text(json.dumps(meta, indent=2))
    return meta


def _parity(src: Source, spec: InputSpec, exported: Any, quantize: str, num_check: int,
            eval_limit: int) -> dict[str, Any]:
    """Logit parity on validation inputs; quantized models also get WA/UA on the test split
    beside float32 JAX."""
    ref = reference(src, spec.frontend)
    parity = compare(exported, ref, parity_inputs(src, spec, "validation", num_check))
    parity["reference"] = "JAX model of the checkpoint (float32, highest matmul precision)"
    parity["inputs"] = ("synthetic audio" if spec.frontend else "validation utterances") + \
        (" (whole)" if spec.length is None else f" padded/cropped to {spec.length}")
    if quantize == "none":
        return parity
    if spec.frontend:
        parity["evaluation"] = {"note": "front-end graphs are checked on synthetic audio only "
                                        "(prepared corpora keep features, not audio)"}
    else:
        parity["evaluation"] = evaluate_split(exported, ref, src, spec, "test", eval_limit)
    return parity


def _sidecar(src: Source, spec: InputSpec, fmt: str, out: pathlib.Path, seconds: float,
             quantize: str, notes: dict[str, Any], parity: dict[str, Any]) -> dict[str, Any]:
    """What ``hrf_jax_runtime`` needs beside the model file (``FILE.json``), and its origin."""
    settings = mel_settings(src.info)
    dynamic = spec.length is None
    return {
        "format": fmt,
        "file": out.name,
        "class_names": list(src.info["class_names"]),
        "sample_rate": settings.sample_rate,
        "frontend": spec.frontend,
        "mel": dataclasses.asdict(settings),
        "frame_rate": float(src.info.get("frame_rate", settings.frame_rate)),
        "normalize": src.info.get("normalize"),
        "mean": src.info.get("mean"),
        "std": src.info.get("std"),
        "input": {"name": "signal", "kind": "audio" if spec.frontend else "logmel",
                  "shape": list(spec.shape), "dtype": "float32", "dynamic_time": dynamic,
                  "min_time": MIN_DYNAMIC_FRAMES if dynamic else None,
                  "seconds": None if dynamic else seconds},
        "length_input": {"name": "length", "shape": [1], "dtype": "int32",
                         "unit": "samples" if spec.frontend else "frames"},
        "output": {"name": "logits", "shape": [1, len(src.info["class_names"])],
                   "dtype": "float32"},
        "quantize": quantize,
        "conversion": notes,
        "size_bytes": out.stat().st_size,
        "source": {"path": src.path, "checkpoint": src.checkpoint, "model": src.model_config,
                   "hrf_layers_merged": src.hrf_layers, "batchnorm_folded": src.folded_bn,
                   "params": count_params(src.variables["params"])},
        "parity": parity,
    }
