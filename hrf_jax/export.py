"""Merged model -> LiteRT (``.tflite``) or ONNX, with quantization, parity and a sidecar.

``export_model(workdir=RUN or checkpoint=DEPLOY_DIR, fmt="tflite"|"onnx", out=FILE)``

1. loads the best checkpoint of a training workdir (or a deploy folder from ``hrf-jax merge``),
   applies ``merge_hrf`` and, where the backbone has a ``fold_bn`` option (Conformer),
   ``fold_batchnorm``; the exported graph is the plain model built with ``fold_bn=True``;
2. traces ``graph(signal, length) -> logits`` for a fixed batch of 1: ``signal`` is
   ``(1, T, F)`` normalised log-Mel frames or, with ``frontend=True``, ``(1, N)`` raw 16 kHz
   mono audio with ``logmel_jnp`` and the run's normalisation inside the graph; ``length``
   ``(1,)`` int32 is the number of valid frames / samples, everything after it is masked;
3. converts: LiteRT through ``jax2tf`` -> ``tf.function(input_signature)`` ->
   ``TFLiteConverter.from_concrete_functions`` with built-in ops only (no Flex);
   ONNX through ``jax2onnx``;
4. measures parity of the exported model against the JAX model it came from (the HRF model
   of the checkpoint, before merging and folding) and fails when a float32 export is off by
   more than ``FP32_TOLERANCE``; quantized exports report WA/UA against float32 JAX;
5. writes the sidecar ``FILE.json`` (``runtime.sidecar_path``) that ``hrf_jax.runtime`` reads.

Time axis: fixed (``seconds``) for both formats; ONNX can export a symbolic time axis
(``dynamic_time=True``) for log-Mel input (the front-end's framing needs a static length) and
the Conformer and ConvTransformer backbones (SpeechFormer's token merging needs a static one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hrf_jax import runtime
from hrf_jax.audio import MelSettings, logmel_jnp
from hrf_jax.metrics import classification_metrics
from hrf_jax.models import build_model, get_config
from hrf_jax.reparam import count_params, fold_batchnorm, hrf_paths, merge_hrf

FORMATS = ("tflite", "onnx")
QUANTIZE = ("none", "fp16", "int8-dynamic", "int8")
FP32_TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """The exported float32 model does not reproduce the JAX model."""


@dataclasses.dataclass
class Source:
    """What an export needs: the deployable model and the JAX model to check it against."""

    model: Any  # plain model (fold_bn=True where folded)
    variables: dict
    reference_model: Any  # the model of the checkpoint (HRF, BatchNorm unfolded)
    reference_variables: dict
    info: dict  # run_info: class names, feature_dim, normalisation
    model_config: dict
    dataset_config: Any  # ml_collections.ConfigDict of the dataset section
    path: str
    hrf_layers: int
    folded_bn: bool


def _plain_model(mcfg: dict, num_classes: int, fold_bn: bool):
    kwargs = {"fold_bn": True} if fold_bn else {}
    return build_model(mcfg["backbone"], mcfg["size"], num_classes=num_classes,
                       hrf_targets=tuple(mcfg["hrf_targets"]), dropout=mcfg["dropout"], **kwargs)


def _supports_fold(mcfg: dict) -> bool:
    cfg = get_config(mcfg["backbone"], mcfg["size"])
    return "fold_bn" in {f.name for f in dataclasses.fields(cfg)}


def load_source(workdir: str | os.PathLike | None = None,
                checkpoint: str | os.PathLike | None = None) -> Source:
    """Merged (and BatchNorm-folded) variables of a workdir's best checkpoint or a deploy dir."""
    if (workdir is None) == (checkpoint is None):
        raise ValueError("give exactly one of --workdir (training run) or --checkpoint "
                         "(deploy folder written by `hrf-jax merge`)")
    if workdir is not None:
        from hrf_jax.deploy import load_run

        config, info, ref_model, ref_vars = load_run(workdir)
        cfg = json.loads(config.to_json())
        path = str(pathlib.Path(workdir).absolute())
    else:
        from hrf_jax.deploy import load_deploy

        ref_model, ref_vars, meta = load_deploy(checkpoint)
        cfg, info = meta["config"], meta["run_info"]
        path = str(pathlib.Path(checkpoint).absolute())
    mcfg = cfg["model"]
    num_classes = len(info["class_names"])
    hrf_layers = len(hrf_paths(ref_vars))
    deploy = merge_hrf(ref_vars)
    folded = "batch_stats" in deploy and _supports_fold(mcfg)
    if folded:
        deploy = fold_batchnorm(deploy)
        if "batch_stats" in deploy:
            raise ValueError(f"{path}: BatchNorm statistics left after folding: "
                             f"{jax.tree_util.tree_structure(deploy['batch_stats'])}")
    model = _plain_model(mcfg, num_classes, folded)
    feats = np.zeros((1, 16, info["feature_dim"]), np.float32)
    template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), feats,
                                                 np.ones((1, 16), bool)))
    want = jax.tree_util.tree_structure(template)
    got = jax.tree_util.tree_structure(deploy)
    if want != got:
        raise ValueError(f"{path}: merged variables do not fit the plain model "
                         f"(fold_bn={folded}): expected {want}, got {got}")
    return Source(model, jax.device_get(deploy), ref_model, ref_vars, info, mcfg,
                  ml_collections.ConfigDict(cfg["dataset"]), path, hrf_layers, folded)


# --------------------------------------------------------------------------- the graph


def mel_settings(info: dict) -> MelSettings:
    """The front-end settings of a run (``features_for`` uses the same)."""
    return MelSettings(num_mels=int(info["feature_dim"]))


def graph_fn(model, variables, info: dict, frontend: bool):
    """``(signal, length) -> logits (1, C)``: the function that gets exported."""
    settings = mel_settings(info)
    mean = None if info.get("mean") is None else np.asarray(info["mean"], np.float32)
    std = None if info.get("std") is None else np.asarray(info["std"], np.float32)
    utterance = mean is None and info.get("normalize") == "utterance"

    def fn(signal, length):
        if frontend:
            feats = logmel_jnp(signal, settings)
            frames = 1 + jnp.maximum(length - settings.n_fft, 0) // settings.hop_length
        else:
            feats, frames = signal, length
        # broadcasted_iota, not arange()[None]: jax2onnx cannot index a symbolic dimension
        mask = jax.lax.broadcasted_iota(jnp.int32, feats.shape[:2], 1) < frames[:, None]
        if frontend and mean is not None:
            feats = (feats - mean) / std
        elif frontend and utterance:
            m = mask[..., None].astype(feats.dtype)
            count = jnp.maximum(m.sum(axis=1, keepdims=True), 1.0)
            mu = (feats * m).sum(axis=1, keepdims=True) / count
            var = (jnp.square(feats - mu) * m).sum(axis=1, keepdims=True) / count
            feats = (feats - mu) / jnp.maximum(jnp.sqrt(var), 1e-5)
        return model.apply(variables, feats, mask, train=False)

    return fn


@dataclasses.dataclass(frozen=True)
class InputSpec:
    frontend: bool
    length: int | None  # time steps of the signal input (samples or frames); None: dynamic
    feature_dim: int

    @property
    def shape(self) -> tuple:
        t = "T" if self.length is None else self.length
        return (1, t) if self.frontend else (1, t, self.feature_dim)


def input_spec(info: dict, frontend: bool, seconds: float, dynamic_time: bool) -> InputSpec:
    settings = mel_settings(info)
    if frontend:
        if dynamic_time:
            raise ValueError("a dynamic time axis needs the log-Mel input (no --frontend): the "
                             "in-graph framing needs a static number of samples")
        if abs(float(info.get("frame_rate", settings.frame_rate)) - settings.frame_rate) > 1e-6:
            raise ValueError(f"--frontend computes {settings.frame_rate:g} frames/s but the run "
                             f"was trained on {info['frame_rate']} frames/s features")
        return InputSpec(True, int(round(seconds * settings.sample_rate)), settings.num_mels)
    frames = None if dynamic_time else int(round(seconds * float(info.get("frame_rate", 100))))
    return InputSpec(False, frames, int(info["feature_dim"]))


# --------------------------------------------------------------------------- converters


def to_tflite(fn, spec: InputSpec, quantize: str = "none", representative=None
              ) -> tuple[bytes, dict]:
    """LiteRT flatbuffer of ``fn`` (built-in ops only) and notes on the conversion."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    if spec.length is None:
        raise ValueError("LiteRT export supports a fixed time axis only (use --seconds)")
    tf_fn = tf.function(
        jax2tf.convert(fn, with_gradient=False),
        input_signature=[tf.TensorSpec(spec.shape, tf.float32, name="signal"),
                         tf.TensorSpec((1,), tf.int32, name="length")],
        autograph=False)
    concrete = tf_fn.get_concrete_function()

    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf_fn)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif quantize == "int8-dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        if representative is None:
            raise ValueError("int8 quantization needs a representative dataset")

        def gen():
            for signal, length in representative:
                yield [signal.astype(np.float32), np.asarray(length, np.int32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = gen
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                          tf.lite.OpsSet.TFLITE_BUILTINS]
        return _full_int8(conv)
    elif quantize != "none":
        raise ValueError(f"unknown quantization {quantize!r}; choose from {QUANTIZE}")
    return conv.convert(), {"ops": "TFLITE_BUILTINS"}


# Attention masks fill padded keys with a huge negative (jax.nn.dot_product_attention:
# -0.7 * float32 max; local_attention: float32 min) before the softmax.
MASK_FILL = 1e30


def _full_int8(conv) -> tuple[bytes, dict]:
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


def _unfill_mask_ranges(model, fb) -> list[str]:
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


# Shortest input of a dynamic-time ONNX model, in frames: the backbones that export one
# subsample by two 3x3 stride-2 VALID convs (7 frames or more give a frame); jax needs the
# bound to decide the subsampled shapes, and the runtime zero-pads shorter input (masked).
MIN_DYNAMIC_FRAMES = 16
DYNAMIC_TIME_BACKBONES = ("conformer", "convtransformer")


@contextlib.contextmanager
def _jax2onnx_fixes():
    """Two ``jax.numpy`` functions that jax2onnx 0.17 replaces, fixed while tracing.

    * ``jnp.where(mask, x, 0)`` of a float32 ``x`` gives float64 there (the Python scalar
      loses its weak type), which reaches convolutions and concatenations as mixed
      float32/float64 (``TypeError`` in ``lax.conv_general_dilated``, or an ONNX file that
      fails type checking): both branches are cast to JAX's own result type first.
    * ``jnp.arange`` over a symbolic length gets a data-dependent size that the next
      indexing cannot handle (``AttributeError: '_DynamicDimSentinel' object has no
      attribute 'rmax'``; the positional encodings call ``jnp.arange(T)`` and
      ``jnp.arange(T - 1, -T, -1)``): it becomes an iota, which keeps the symbolic size.
    """
    where, arange = jnp.where, jnp.arange

    def typed_where(condition, x=None, y=None, **kwargs):
        if x is not None and y is not None:
            dtype = jnp.result_type(x, y)
            x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
        return where(condition, x, y, **kwargs)

    def iota_arange(start, stop=None, step=None, dtype=None, **kwargs):
        if not any(jax.export.is_symbolic_dim(v) for v in (start, stop, step)):
            return arange(*[v for v in (start, stop, step) if v is not None], dtype=dtype,
                          **kwargs)
        start, stop = (0, start) if stop is None else (start, stop)
        step = 1 if step is None else step
        if step not in (1, -1):
            raise ValueError(f"symbolic jnp.arange with step {step} is not supported")
        return start + step * jax.lax.iota(dtype or jnp.int32, (stop - start) * step)

    jnp.where, jnp.arange = typed_where, iota_arange
    try:
        yield
    finally:
        jnp.where, jnp.arange = where, arange


@contextlib.contextmanager
def _shared_symbolic_scopes():
    """Deep copies of a symbolic shape share its scope while jax2onnx converts.

    jax2onnx 0.17 deep-copies gather instructions, symbolic dimensions included, and jax's
    ``SymbolicScope`` cannot be deep-copied once it has constraints (``AttributeError:
    'SymbolicScope' object has no attribute '_normalization_rules'``; the Conformer's
    relative-position gather hits it). A scope is never changed after it is built, so a copy
    may be the scope itself.
    """
    from jax._src.export import shape_poly

    scope = shape_poly.SymbolicScope
    had = "__deepcopy__" in vars(scope)
    old = vars(scope).get("__deepcopy__")
    scope.__deepcopy__ = lambda self, memo: self
    try:
        yield
    finally:
        if had:
            scope.__deepcopy__ = old
        else:
            del scope.__deepcopy__


def to_onnx(fn, spec: InputSpec) -> tuple[bytes, dict]:
    """ONNX model bytes of ``fn`` (a symbolic ``T`` when ``spec.length is None``)."""
    from jax2onnx import to_onnx as _to_onnx

    signal: Any = spec.shape
    if spec.length is None:
        (t,) = jax.export.symbolic_shape("T", constraints=(f"T >= {MIN_DYNAMIC_FRAMES}",))
        signal = jax.ShapeDtypeStruct((1, t, spec.feature_dim), jnp.float32)

    def traced(x, length):
        with _jax2onnx_fixes():
            return fn(x, length)

    try:
        with _shared_symbolic_scopes() if spec.length is None else contextlib.nullcontext():
            model = _to_onnx(traced, [signal, jax.ShapeDtypeStruct((1,), jnp.int32)],
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


# --------------------------------------------------------------------------- parity data


def _fit(x: np.ndarray, length: int | None) -> tuple[np.ndarray, int]:
    """Crops or zero-pads time-first ``x`` to ``length``: (padded, valid)."""
    if length is None:
        return x.astype(np.float32), len(x)
    valid = min(len(x), length)
    out = np.zeros((length, *x.shape[1:]), np.float32)
    out[:valid] = x[:valid]
    return out, valid


def parity_inputs(src: Source, spec: InputSpec, split: str, limit: int,
                  seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batched ``(signal (1, ...), length (1,))`` pairs for checks and calibration.

    Log-Mel graphs use utterances of ``split`` (normalised as in training). Front-end graphs
    need audio, which prepared corpora do not keep: they use synthetic utterances
    (``hrf_jax.data.synthetic``) - parity compares two implementations of the same graph,
    so any speech-like audio serves.
    """
    out = []
    if spec.frontend:
        from hrf_jax.data.synthetic import SyntheticConfig, synthesize

        cfg = SyntheticConfig(seed=1000 + seed + {"train": 0, "validation": 1, "test": 2}[split])
        for i in range(limit):
            wave, _, _ = synthesize(cfg, i)
            sig, valid = _fit(wave, spec.length)
            out.append((sig[None], np.asarray([valid], np.int32)))
        return out
    ds = _open(src)
    source = getattr(ds, split)
    if not len(source):
        source = ds.validation if len(ds.validation) else ds.train
    for i in range(min(limit, len(source))):
        sig, valid = _fit(source[i]["feats"], spec.length)
        out.append((sig[None], np.asarray([valid], np.int32)))
    return out


def _open(src: Source):
    from hrf_jax.loop import open_dataset

    return open_dataset(src.dataset_config, prepare=False)


def _reference(src: Source, frontend: bool):
    fn = graph_fn(src.reference_model, src.reference_variables, src.info, frontend)
    jitted = jax.jit(fn)

    def run(signal, length):
        with jax.default_matmul_precision("highest"):
            return np.asarray(jitted(signal, length), np.float32)

    return run


def compare(exported, reference, inputs) -> dict[str, Any]:
    """Max |logit diff| and argmax agreement of two ``(signal, length) -> logits`` functions."""
    diffs, agree = [], 0
    for signal, length in inputs:
        a = np.asarray(exported(signal, length), np.float32)
        b = np.asarray(reference(signal, length), np.float32)
        diffs.append(float(np.max(np.abs(a - b))))
        agree += int(np.argmax(a) == np.argmax(b))
    n = len(inputs)
    return {"max_abs_logit_diff": max(diffs) if diffs else None,
            "mean_max_abs_logit_diff": float(np.mean(diffs)) if diffs else None,
            "argmax_agreement": agree / n if n else None, "utterances": n}


def evaluate_split(exported, reference, src: Source, spec: InputSpec, split: str,
                   limit: int) -> dict[str, Any]:
    """WA/UA of the exported and the float32 JAX model on ``split`` (first ``limit``
    utterances, each cut into the exported windows as the runtime does)."""
    ds = _open(src)
    source = getattr(ds, split)
    if not len(source):
        split, source = "validation", ds.validation
    n = min(limit, len(source))
    labels, pe, pr = [], [], []
    for i in range(n):
        item = source[i]
        win = runtime.windows(item["feats"], spec.length)
        w = np.asarray([v for _, v in win], np.float64)
        probs = []
        for fn in (exported, reference):
            p = np.stack([runtime.softmax(fn(x[None], np.asarray([v], np.int32))[0])
                          for x, v in win])
            probs.append((p * w[:, None]).sum(0) / w.sum())
        labels.append(item["label"])
        pe.append(probs[0].argmax())
        pr.append(probs[1].argmax())
    c = len(src.info["class_names"])
    me = classification_metrics(np.asarray(labels), np.asarray(pe), c)
    mr = classification_metrics(np.asarray(labels), np.asarray(pr), c)
    return {"split": split, "utterances": n,
            "exported": {"wa": me["wa"], "ua": me["ua"]},
            "fp32_jax": {"wa": mr["wa"], "ua": mr["ua"]},
            "prediction_agreement": float(np.mean(np.asarray(pe) == np.asarray(pr))) if n
            else None}


# --------------------------------------------------------------------------- export


def _probe(path: pathlib.Path) -> None:
    """Loads and runs ``path`` once in a child process: some full-integer LiteRT models
    abort the interpreter (SIGABRT) when loaded, which would kill this process."""
    import subprocess
    import sys

    code = ("import importlib.util, sys, numpy as np\n"
            f"spec = importlib.util.spec_from_file_location('rt', {runtime.__file__!r})\n"
            "rt = importlib.util.module_from_spec(spec); spec.loader.exec_module(rt)\n"
            f"run = rt.open_backend({str(path)!r})\n"
            "run(np.zeros(tuple(run._signal['shape']), np.float32), np.ones((1,), np.int32))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        path.unlink(missing_ok=True)
        raise ValueError(
            f"the full-integer (int8) LiteRT model converted but the interpreter failed to run "
            f"it (exit status {proc.returncode}: {proc.stderr.strip()[-300:]!r}); use "
            f"--quantize int8-dynamic or fp16")


def export_model(fmt: str, out: str | os.PathLike, *, workdir=None, checkpoint=None,
                 frontend: bool = False, seconds: float = 3.0, dynamic_time: bool = False,
                 quantize: str = "none", num_check: int = 16, eval_limit: int = 100,
                 calibration: int = 32, tolerance: float = FP32_TOLERANCE) -> dict[str, Any]:
    """Exports, checks parity and writes ``out`` and its sidecar; returns the sidecar dict."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    if quantize not in QUANTIZE:
        raise ValueError(f"unknown quantization {quantize!r}; choose from {QUANTIZE}")
    if fmt == "onnx" and quantize != "none":
        raise ValueError("--quantize applies to LiteRT only; ONNX exports are float32")
    if fmt == "tflite" and dynamic_time:
        raise ValueError("LiteRT export supports a fixed time axis only: drop --dynamic-time "
                         "(the runtime pads/crops to --seconds)")
    out = pathlib.Path(out)
    if out.suffix != f".{fmt}":
        raise ValueError(f"--out {out} should end in .{fmt}")
    src = load_source(workdir, checkpoint)
    spec = input_spec(src.info, frontend, seconds, dynamic_time)
    fn = graph_fn(src.model, src.variables, src.info, frontend)

    t0 = time.perf_counter()
    if fmt == "tflite":
        rep = parity_inputs(src, spec, "train", calibration) if quantize == "int8" else None
        blob, notes = to_tflite(fn, spec, quantize, rep)
    else:
        blob, notes = to_onnx(fn, spec)
    convert_s = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")  # same suffix: the runtime needs it
    tmp.write_bytes(blob)
    if quantize == "int8":
        _probe(tmp)
    try:
        exported = runtime.open_backend(tmp)
        reference = _reference(src, frontend)
        parity = compare(exported, reference, parity_inputs(src, spec, "validation", num_check))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    parity["reference"] = "JAX model of the checkpoint (float32, highest matmul precision)"
    parity["inputs"] = ("synthetic audio" if frontend else "validation utterances") + \
        (" (whole)" if dynamic_time else f" padded/cropped to {spec.length}")
    if quantize == "none":
        parity["tolerance"] = tolerance
        if parity["max_abs_logit_diff"] is None or not parity["max_abs_logit_diff"] <= tolerance:
            tmp.unlink(missing_ok=True)
            raise ParityError(
                f"{fmt} export of {src.path} fails float32 parity: max |logit diff| "
                f"{parity['max_abs_logit_diff']} > {tolerance} over {parity['utterances']} "
                f"utterances (argmax agreement {parity['argmax_agreement']}); nothing written "
                f"to {out}. Rerun with --tolerance to inspect, or report the model config.")
    else:
        split = "validation" if frontend else "test"
        parity["evaluation"] = (
            {"note": "front-end graphs are checked on synthetic audio only "
                     "(prepared corpora keep features, not audio)"}
            if frontend else evaluate_split(exported, reference, src, spec, split, eval_limit))
    tmp.replace(out)

    settings = mel_settings(src.info)
    meta = {
        "format": fmt,
        "file": out.name,
        "class_names": list(src.info["class_names"]),
        "sample_rate": settings.sample_rate,
        "frontend": frontend,
        "mel": dataclasses.asdict(settings),
        "frame_rate": float(src.info.get("frame_rate", settings.frame_rate)),
        "normalize": src.info.get("normalize"),
        "mean": src.info.get("mean"),
        "std": src.info.get("std"),
        "input": {"name": "signal", "kind": "audio" if frontend else "logmel",
                  "shape": list(spec.shape), "dtype": "float32",
                  "dynamic_time": spec.length is None,
                  "min_time": MIN_DYNAMIC_FRAMES if spec.length is None else None,
                  "seconds": None if spec.length is None else seconds},
        "length_input": {"name": "length", "shape": [1], "dtype": "int32",
                         "unit": "samples" if frontend else "frames"},
        "output": {"name": "logits", "shape": [1, len(src.info["class_names"])],
                   "dtype": "float32"},
        "quantize": quantize,
        "conversion": {**notes, "seconds": round(convert_s, 2)},
        "size_bytes": out.stat().st_size,
        "source": {"path": src.path, "checkpoint": "best" if workdir is not None else "deploy",
                   "model": src.model_config, "hrf_layers_merged": src.hrf_layers,
                   "batchnorm_folded": src.folded_bn,
                   "params": count_params(src.variables["params"])},
        "parity": parity,
    }
    runtime.sidecar_path(out).write_text(json.dumps(meta, indent=2))
    return meta


def _export(args) -> int:
    import sys

    try:
        meta = _export_args(args)
    except ParityError as err:
        print(f"hrf-jax export: {err}", file=sys.stderr)
        return 1
    return _report(args, meta)


def _export_args(args) -> dict[str, Any]:
    return export_model(args.format, args.out, workdir=args.workdir, checkpoint=args.checkpoint,
                        frontend=args.frontend, seconds=args.seconds,
                        dynamic_time=args.dynamic_time, quantize=args.quantize,
                        num_check=args.num_check, eval_limit=args.eval_limit,
                        tolerance=args.tolerance)


def _report(args, meta: dict) -> int:
    p = meta["parity"]
    line = (f"wrote {args.out} ({meta['size_bytes']:,} bytes, {meta['format']}, "
            f"quantize={meta['quantize']}) and {runtime.sidecar_path(args.out)}; "
            f"max |logit diff| {p['max_abs_logit_diff']:.2e}, argmax agreement "
            f"{p['argmax_agreement']:.3f} over {p['utterances']} utterances")
    ev = p.get("evaluation", {})
    if "exported" in ev:
        line += (f"; {ev['split']} ({ev['utterances']}): WA {ev['exported']['wa']:.4f} "
                 f"UA {ev['exported']['ua']:.4f} (fp32 JAX: WA {ev['fp32_jax']['wa']:.4f} "
                 f"UA {ev['fp32_jax']['ua']:.4f})")
    print(line)
    return 0


def register(subparsers) -> None:
    """Adds ``hrf-jax export`` to the CLI."""
    p = subparsers.add_parser(
        "export", help="export the merged model to LiteRT / ONNX",
        description="Best checkpoint -> merge_hrf -> fold_batchnorm -> .tflite / .onnx with a "
                    "JSON sidecar FILE.json (classes, front-end, input shape, parity).")
    p.add_argument("--workdir", default=None, help="training run (uses its best checkpoint)")
    p.add_argument("--checkpoint", default=None, help="deploy folder written by `hrf-jax merge`")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="FILE.tflite or FILE.onnx")
    p.add_argument("--frontend", action="store_true",
                   help="graph takes raw 16 kHz mono audio (log-Mel + normalisation inside)")
    p.add_argument("--seconds", type=float, default=3.0, help="fixed input length")
    p.add_argument("--dynamic-time", action="store_true",
                   help="ONNX, log-Mel input, conformer / convtransformer only: symbolic "
                        "time axis instead of --seconds")
    p.add_argument("--quantize", default="none", choices=QUANTIZE, help="LiteRT only")
    p.add_argument("--num-check", type=int, default=16,
                   help="utterances for the float32 parity check")
    p.add_argument("--eval-limit", type=int, default=100,
                   help="test utterances for WA/UA of quantized models")
    p.add_argument("--tolerance", type=float, default=FP32_TOLERANCE,
                   help="max |logit diff| allowed for float32 exports")
    p.set_defaults(func=_export)


__all__ = ["FORMATS", "QUANTIZE", "ParityError", "export_model", "load_source", "register"]
