"""hrf-jax: HRF training-time factorization and exact deHRF merging for SER Transformers."""

from hrf_jax.layers import FeedForward, HRFDense
from hrf_jax.models import build_model
from hrf_jax.reparam import (
    count_params,
    expand_hrf,
    fold_batchnorm,
    hrf_paths,
    merge_hrf,
    verify_equivalence,
)

__version__ = "0.1.0"

__all__ = [
    "FeedForward",
    "HRFDense",
    "build_model",
    "count_params",
    "expand_hrf",
    "fold_batchnorm",
    "hrf_paths",
    "merge_hrf",
    "verify_equivalence",
]
