"""On-device inference for models written by ``hrf-jax export``: numpy and one runtime only.

Nothing here imports JAX, Flax, TensorFlow or ``hrf_jax``; ``soundfile``/``soxr`` are
imported when audio is read, ``ai_edge_litert`` (``.tflite``) or ``onnxruntime`` (``.onnx``)
when a model is loaded.
"""

from hrf_jax_runtime.audio import read_audio, to_rate
from hrf_jax_runtime.features import logmel, normalize
from hrf_jax_runtime.model import ExportedModel, open_backend, sidecar_path, windows

__version__ = "0.1.0"

__all__ = ["ExportedModel", "logmel", "normalize", "open_backend", "read_audio", "sidecar_path",
           "to_rate", "windows"]
