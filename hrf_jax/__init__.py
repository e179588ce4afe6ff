"""hrf-jax: HRF training-time factorization and exact deHRF merging for SER Transformers.

The public names below are imported on first use (PEP 562), so ``hrf-jax --help`` and
``hrf-jax predict --model`` never pull in JAX or Flax (the device runtime is a distribution
of its own, ``hrf-jax-runtime``, in ``runtime/``).
"""

from __future__ import annotations

from hrf_jax.lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "HRFDense": "hrf_jax.hrf",
    "HRFSpec": "hrf_jax.hrf",
    "FeedForward": "hrf_jax.layers",
    "build_model": "hrf_jax.models",
    "count_params": "hrf_jax.reparam",
    "expand_hrf": "hrf_jax.reparam",
    "fold_batchnorm": "hrf_jax.reparam",
    "hrf_paths": "hrf_jax.reparam",
    "merge_hrf": "hrf_jax.reparam",
    "verify_equivalence": "hrf_jax.reparam",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
