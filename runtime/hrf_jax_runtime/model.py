"""An exported model and its sidecar: windows, backends (LiteRT or ONNX Runtime), prediction.

Models take two inputs: the signal (``(1, N)`` 16 kHz audio for ``--frontend`` exports,
``(1, T, F)`` normalised log-Mel frames otherwise) and ``length`` ``(1,)`` int32, the number
of valid samples / frames; the graph masks everything after it, so zero padding never changes
a prediction. Fixed-length models see audio in windows of the exported length: shorter audio
is zero-padded, longer audio is cut into consecutive windows whose probabilities are averaged
(weighted by their valid length). Models with a dynamic time axis take the whole utterance
(zero-padded to the sidecar's ``min_time`` frames when shorter).
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from hrf_jax_runtime.audio import read_audio, to_rate
from hrf_jax_runtime.features import logmel, normalize

SIDECAR_SUFFIX = ".json"  # the sidecar of ``model.tflite`` is ``model.tflite.json``


def sidecar_path(model_path: str | pathlib.Path) -> pathlib.Path:
    """``FILE`` -> ``FILE.json`` (the full file name plus ``.json``)."""
    model_path = pathlib.Path(model_path)
    return model_path.with_name(model_path.name + SIDECAR_SUFFIX)


def windows(x: np.ndarray, size: int | None) -> list[tuple[np.ndarray, int]]:
    """Cuts ``x`` (time first) into consecutive windows of ``size``, the last zero-padded:
    ``[(window (size, ...), valid_length)]``; ``size=None`` keeps ``x`` whole."""
    x = np.asarray(x, np.float32)
    total = x.shape[0]
    if size is None:
        return [(x, total)]
    out = []
    for start in range(0, max(total, 1), size):
        piece = x[start:start + size]
        if len(piece) < size:
            piece = np.concatenate([piece, np.zeros((size - len(piece), *x.shape[1:]),
                                                    np.float32)])
        out.append((piece, min(size, total - start)))
    # a short tail (under a quarter window) after full windows adds noise, not evidence
    if len(out) > 1 and out[-1][1] < size // 4:
        out.pop()
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64) - np.max(logits, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- backends


def _missing(path: pathlib.Path, module: str, package: str, extra: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(
        f"running {path} needs the module {module}, which is not installed: "
        f"pip install {package} (or pip install 'hrf-jax-runtime[{extra}]')", name=module)


class _LiteRT:
    def __init__(self, path: pathlib.Path, num_threads: int | None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise _missing(path, "ai_edge_litert", "ai-edge-litert", "litert") from exc
        self._interp = Interpreter(model_path=str(path), num_threads=num_threads)
        self._interp.allocate_tensors()
        inputs = self._interp.get_input_details()
        self._signal = next(d for d in inputs if d["dtype"] != np.int32)
        self._length = next(d for d in inputs if d["dtype"] == np.int32)
        self._output = self._interp.get_output_details()[0]

    def __call__(self, signal: np.ndarray, length: np.ndarray) -> np.ndarray:
        if tuple(self._signal["shape"]) != signal.shape:
            self._interp.resize_tensor_input(self._signal["index"], signal.shape)
            self._interp.allocate_tensors()
            self._signal = {**self._signal, "shape": np.asarray(signal.shape)}
        self._interp.set_tensor(self._signal["index"], signal)
        self._interp.set_tensor(self._length["index"], length)
        self._interp.invoke()
        return np.array(self._interp.get_tensor(self._output["index"]))


class _Onnx:
    def __init__(self, path: pathlib.Path, num_threads: int | None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise _missing(path, "onnxruntime", "onnxruntime", "onnx") from exc
        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = num_threads
        self._sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inputs = self._sess.get_inputs()
        self._signal = next(i.name for i in inputs if "int" not in i.type)
        self._length = next(i.name for i in inputs if "int" in i.type)

    def __call__(self, signal: np.ndarray, length: np.ndarray) -> np.ndarray:
        return self._sess.run(None, {self._signal: signal, self._length: length})[0]


def open_backend(path: str | pathlib.Path, num_threads: int | None = None):
    """A callable ``(signal, length) -> logits`` for a ``.tflite`` or ``.onnx`` file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.suffix == ".tflite":
        return _LiteRT(path, num_threads)
    if path.suffix == ".onnx":
        return _Onnx(path, num_threads)
    raise ValueError(f"{path}: unknown model format {path.suffix!r}; expected .tflite or .onnx")


# --------------------------------------------------------------------------- model


class ExportedModel:
    """An exported model with its sidecar: ``predict_wave`` / ``predict_file``."""

    def __init__(self, path: str | pathlib.Path, sidecar: str | pathlib.Path | None = None,
                 num_threads: int | None = None):
        self.path = pathlib.Path(path)
        side = pathlib.Path(sidecar) if sidecar else sidecar_path(self.path)
        if not side.is_file():
            raise FileNotFoundError(f"sidecar {side} not found; `hrf-jax export` writes it "
                                    f"beside the model")
        self.meta: dict[str, Any] = json.loads(side.read_text())
        self.class_names: list[str] = list(self.meta["class_names"])
        self.sample_rate: int = int(self.meta["sample_rate"])
        self.frontend: bool = bool(self.meta["frontend"])
        self._time = None if self.meta["input"]["dynamic_time"] else \
            int(self.meta["input"]["shape"][1])
        self._min_time = int(self.meta["input"].get("min_time") or 0)
        self._run = open_backend(self.path, num_threads)

    def signal(self, wave: np.ndarray) -> np.ndarray:
        """What the graph's first input sees, time first: audio, or normalised log-Mel."""
        if self.frontend:
            return np.asarray(wave, np.float32)
        return normalize(logmel(wave, self.meta["mel"]), self.meta)

    def logits_windows(self, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(num_windows, C) logits and (num_windows,) valid lengths of a time-first signal."""
        logits, lengths = [], []
        for piece, valid in windows(signal, self._time):
            if len(piece) < self._min_time:  # a dynamic-time graph's shortest input (masked)
                pad = np.zeros((self._min_time - len(piece), *piece.shape[1:]), np.float32)
                piece = np.concatenate([piece, pad])
            out = self._run(piece[None], np.asarray([valid], np.int32))
            logits.append(np.asarray(out, np.float32)[0])
            lengths.append(valid)
        return np.stack(logits), np.asarray(lengths)

    def probabilities(self, signal: np.ndarray) -> np.ndarray:
        """(C,) class probabilities: window softmaxes averaged, weighted by valid length."""
        logits, lengths = self.logits_windows(signal)
        probs = softmax(logits)
        return (probs * lengths[:, None]).sum(0) / max(lengths.sum(), 1)

    def predict_wave(self, wave: np.ndarray, sample_rate: int | None = None) -> dict[str, Any]:
        """Label and probabilities of a waveform ((N,) or (N, C)) at ``sample_rate``."""
        wave = to_rate(wave, sample_rate or self.sample_rate, self.sample_rate)
        probs = self.probabilities(self.signal(wave))
        return {"label": self.class_names[int(np.argmax(probs))],
                "probs": {n: float(p) for n, p in zip(self.class_names, probs, strict=True)},
                "seconds": len(wave) / self.sample_rate}

    def predict_file(self, path: str | pathlib.Path) -> dict[str, Any]:
        """``predict_wave`` of an audio file (any rate and channel count)."""
        return {"path": str(path), **self.predict_wave(read_audio(path, self.sample_rate))}


def main(argv: Sequence[str] | None = None) -> int:
    """``hrf-jax-predict MODEL AUDIO...``: one JSON line per file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        print("usage: hrf-jax-predict MODEL.tflite|MODEL.onnx AUDIO...", file=sys.stderr)
        return 2
    model = ExportedModel(argv[0])
    for path in argv[1:]:
        print(json.dumps(model.predict_file(path)))
    return 0

