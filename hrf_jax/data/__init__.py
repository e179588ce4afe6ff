"""Corpora (embedded synthetic, IEMOCAP, DAIC-WOZ, M3ED, CSV), preparation and input pipeline."""

from hrf_jax.data.pipeline import Dataset, EvalLoader, Source, TrainLoader, load_dataset
from hrf_jax.data.prepare import default_data_dir, ensure_prepared, prepare, register

__all__ = [
    "Dataset",
    "EvalLoader",
    "Source",
    "TrainLoader",
    "default_data_dir",
    "ensure_prepared",
    "load_dataset",
    "prepare",
    "register",
]
