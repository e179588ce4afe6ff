"""On-device inference for models written by ``hrf-jax export``: numpy + one runtime only.

This module imports only numpy and the standard library at module level; ``soundfile`` and
``soxr`` are imported when audio is read, and ``ai_edge_litert`` (``.tflite``) or
``onnxruntime`` (``.onnx``) when a model is loaded. It never imports JAX, TensorFlow, Flax or
any other ``hrf_jax`` module, so it can be copied onto a device next to the model and its
sidecar and run there (``python runtime.py model.tflite speech.wav``)::

    from runtime import ExportedModel
    model = ExportedModel("ser.tflite")          # reads ser.tflite.json beside it
    print(model.predict_file("speech.wav"))       # {"label": ..., "probs": {...}, ...}

(Inside the package, ``import hrf_jax.runtime`` still runs ``hrf_jax/__init__``, which
imports JAX; a device without JAX loads this file by path.)

Models take two inputs: the signal (``(1, N)`` 16 kHz audio for ``--frontend`` exports,
``(1, T, F)`` normalised log-Mel frames otherwise) and ``length`` ``(1,)`` int32, the number
of valid samples / frames; the graph masks everything after it, so zero padding never changes
a prediction. Fixed-length models see audio in windows of the exported length: shorter audio
is zero-padded, longer audio is cut into consecutive windows whose probabilities are averaged
(weighted by their valid length). Models with a dynamic time axis take the whole utterance
(zero-padded to the sidecar's ``min_time`` frames when shorter).

Models without the front-end need log-Mel features: :func:`logmel` is a small numpy copy of
``hrf_jax.audio.logmel_np`` driven by the sidecar's ``mel`` settings (kept here so that this
file stays free of JAX; ``test_numpy_logmel_matches_audio_module`` in ``tests/test_export.py``
checks it against ``logmel_np``).
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

SIDECAR_SUFFIX = ".json"  # the sidecar of ``model.tflite`` is ``model.tflite.json``


def sidecar_path(model_path: str | pathlib.Path) -> pathlib.Path:
    """``FILE`` -> ``FILE.json`` (the full file name plus ``.json``)."""
    model_path = pathlib.Path(model_path)
    return model_path.with_name(model_path.name + SIDECAR_SUFFIX)


# --------------------------------------------------------------------------- audio


def read_audio(path: str | pathlib.Path, sample_rate: int = 16_000) -> np.ndarray:
    """Any file libsndfile reads -> (N,) float32 mono at ``sample_rate`` (soxr HQ)."""
    import soundfile as sf

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise ValueError(f"no samples in {path}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"NaN or inf samples in {path}")
    return to_rate(data, sr, sample_rate)


def to_rate(data: np.ndarray, sr: int, sample_rate: int = 16_000) -> np.ndarray:
    """(N,) or (N, C) audio at ``sr`` -> (M,) float32 mono at ``sample_rate``."""
    data = np.asarray(data, dtype=np.float32)
    mono = data.mean(axis=1) if data.ndim == 2 else data
    if sr != sample_rate:
        import soxr

        mono = soxr.resample(mono, sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _hz_to_mel(hz, htk: bool):
    hz = np.asarray(hz, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    safe = np.maximum(hz, min_log_hz)
    return np.where(hz >= min_log_hz, min_log_mel + np.log(safe / min_log_hz) / logstep,
                    hz / f_sp)


def _mel_to_hz(mel, htk: bool):
    mel = np.asarray(mel, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)),
                    mel * f_sp)


def _filterbank(s: dict) -> np.ndarray:
    fmax = s["sample_rate"] / 2 if s.get("fmax") is None else s["fmax"]
    freqs = np.linspace(0.0, s["sample_rate"] / 2, s["n_fft"] // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(s["fmin"], s["htk"]), _hz_to_mel(fmax, s["htk"]),
                                   s["num_mels"] + 2), s["htk"])
    widths = np.diff(edges)
    ramps = edges[:, None] - freqs[None, :]
    weights = np.maximum(0.0, np.minimum(-ramps[:-2] / widths[:-1, None],
                                         ramps[2:] / widths[1:, None]))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.T


def logmel(wave: np.ndarray, settings: dict) -> np.ndarray:
    """(N,) waveform -> (T, num_mels) float32 log-Mel with the sidecar's ``mel`` settings."""
    s = settings
    x = np.asarray(wave, dtype=np.float64)
    if x.shape[0] < s["n_fft"]:
        x = np.pad(x, (0, s["n_fft"] - x.shape[0]))
    n = s["win_length"]
    window = np.zeros(s["n_fft"])
    left = (s["n_fft"] - n) // 2
    window[left:left + n] = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    frames = np.lib.stride_tricks.sliding_window_view(x, s["n_fft"])[::s["hop_length"]]
    spec = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    mel = spec @ _filterbank(s)
    return np.log(np.maximum(mel, s["log_floor"])).astype(np.float32)


def normalize(feats: np.ndarray, meta: dict) -> np.ndarray:
    """Training-time normalisation of (T, F) log-Mel: corpus mean/std, per utterance, or none."""
    feats = np.asarray(feats, np.float32)
    if meta.get("mean") is not None:
        return (feats - np.asarray(meta["mean"], np.float32)) / np.asarray(meta["std"],
                                                                             np.float32)
    if meta.get("normalize") == "utterance":
        std = np.maximum(feats.std(axis=0, keepdims=True), 1e-5)
        return (feats - feats.mean(axis=0, keepdims=True)) / std
    return feats


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


def _missing(path: pathlib.Path, module: str, package: str) -> ModuleNotFoundError:
    # this file also runs alone on a device without hrf-jax, so name the plain package too
    return ModuleNotFoundError(
        f"running {path} needs the module {module}, which is not installed: "
        f"pip install {package} (or pip install 'hrf-jax[runtime]')", name=module)


class _LiteRT:
    def __init__(self, path: pathlib.Path, num_threads: int | None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise _missing(path, "ai_edge_litert", "ai-edge-litert") from exc
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
            raise _missing(path, "onnxruntime", "onnxruntime") from exc
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
    """``python runtime.py MODEL AUDIO...``: one JSON line per file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        print("usage: python runtime.py MODEL.tflite|MODEL.onnx AUDIO...", file=sys.stderr)
        return 2
    model = ExportedModel(argv[0])
    for path in argv[1:]:
        print(json.dumps(model.predict_file(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ExportedModel", "logmel", "open_backend", "read_audio", "sidecar_path",
           "windows"]
