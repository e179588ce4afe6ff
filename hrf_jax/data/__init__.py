"""Corpora (see `registry.CORPORA`), their preparation into TFDS folders, and the input pipeline.

The names below are imported on first use (PEP 562), so `hrf_jax.data.registry` and the
`hrf-jax prepare --help` that reads it load neither TFDS, grain nor JAX.
"""

from __future__ import annotations

from hrf_jax.lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "Dataset": "hrf_jax.data.pipeline",
    "EvalLoader": "hrf_jax.data.pipeline",
    "Source": "hrf_jax.data.pipeline",
    "TrainLoader": "hrf_jax.data.pipeline",
    "load_dataset": "hrf_jax.data.pipeline",
    "default_data_dir": "hrf_jax.data.preparation",
    "ensure_prepared": "hrf_jax.data.preparation",
    "prepare": "hrf_jax.data.preparation",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
