"""The optional packages each export format needs, found before anything is loaded."""

from __future__ import annotations

import importlib.util

# LiteRT: TensorFlow converts, ai_edge_litert runs the parity check;
# ONNX: jax2onnx converts, onnxruntime runs the parity check.
MODULES = {"tflite": ("tensorflow", "ai_edge_litert"), "onnx": ("jax2onnx", "onnxruntime")}
INSTALL = "pip install 'hrf-jax[export]'"


def missing_modules(fmt: str) -> list[str]:
    """The modules exporting to ``fmt`` needs that are not installed."""
    return [name for name in MODULES[fmt] if importlib.util.find_spec(name) is None]


def require_extras(fmt: str) -> None:
    """ModuleNotFoundError naming the missing modules and the install command, if any."""
    missing = missing_modules(fmt)
    if missing:
        raise ModuleNotFoundError(
            f"exporting to {fmt} needs the module(s) {', '.join(missing)}, which are not "
            f"installed; install the export extra: {INSTALL}", name=missing[0])
