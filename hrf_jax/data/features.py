"""Features of one `SourceItem`: log-Mel of its audio (segment) or a precomputed (T, F) array.

Bad input raises `AudioError(reason)`, which the builders count as a skip under that reason.
"""

from __future__ import annotations

import pathlib

import numpy as np

from hrf_jax.audio import AudioError, MelSettings, load_audio, logmel_np
from hrf_jax.data.corpora import LayoutError, SourceItem


class Extractor:
    """Turns an item into (T, F) float32 features; raises AudioError(reason) for bad input.

    `features_dir`: per-utterance `<id>.npy` (T, F) arrays used instead of log-Mel.
    `feature_dim`: F every item must have (None: any).
    """

    def __init__(self, settings: MelSettings, features_dir: pathlib.Path | None = None,
                 feature_dim: int | None = None):
        self.settings = settings
        self.features_dir = features_dir
        self.feature_dim = feature_dim
        self._cached: tuple[pathlib.Path, np.ndarray] | None = None  # last decoded file

    def __getstate__(self) -> dict:
        # A worker process decodes for itself; never ship a decoded file along.
        return {**self.__dict__, "_cached": None}

    def __call__(self, item: SourceItem) -> np.ndarray:
        feats_path = _features_path(item, self.features_dir)
        if feats_path is not None:
            feats = self._precomputed(feats_path)
        else:
            feats = logmel_np(self._segment(item), self.settings)
        if self.feature_dim is not None and feats.shape[1] != self.feature_dim:
            raise AudioError("bad_feature_shape", f"{item.id}: {feats.shape[1]} features, "
                             f"expected {self.feature_dim}")
        return feats

    def many(self, items: list[SourceItem]) -> list[np.ndarray | str]:
        """float16 features (as stored), or the skip reason, per item: one worker job.

        Reasons, not AudioErrors, travel back from worker processes: an exception whose
        `__init__` takes other arguments than its `args` does not unpickle.
        """
        out: list[np.ndarray | str] = []
        for item in items:
            try:
                out.append(self(item).astype(np.float16))
            except AudioError as err:
                out.append(err.reason)
        return out

    def _segment(self, item: SourceItem) -> np.ndarray:
        wave = item.generate() if item.generate is not None else self._wave(item.path)
        if item.start is not None:
            sr = self.settings.sample_rate
            lo, hi = int(round(item.start * sr)), int(round(item.end * sr))
            if lo >= wave.shape[0]:
                raise AudioError("segment_out_of_range",
                                 f"{item.path}: segment {item.start}-{item.end} s past the end")
            wave = wave[lo:hi]
        return wave

    def _wave(self, path: pathlib.Path) -> np.ndarray:
        # DAIC-WOZ cuts dozens of turns from one long file: decode each file once.
        if self._cached is None or self._cached[0] != path:
            self._cached = (path, load_audio(path, self.settings.sample_rate))
        return self._cached[1]

    def _precomputed(self, path: pathlib.Path) -> np.ndarray:
        if not path.is_file():
            raise AudioError("missing_features", f"feature file not found: {path}")
        try:
            feats = np.load(path, allow_pickle=False)
        except Exception as exc:  # numpy raises several types for corrupt files
            raise AudioError("unreadable_features", f"cannot load {path}: {exc}") from exc
        if feats.ndim != 2 or feats.shape[0] == 0:
            raise AudioError("bad_feature_shape", f"{path}: shape {feats.shape}, expected (T, F)")
        if not np.all(np.isfinite(feats)):
            raise AudioError("nonfinite_features", f"NaN or inf in {path}")
        return feats.astype(np.float32)


def _features_path(item: SourceItem, features_dir: pathlib.Path | None) -> pathlib.Path | None:
    if item.features is not None:
        return item.features
    return features_dir / f"{item.id}.npy" if features_dir else None


def has_precomputed(items: list[SourceItem], features_dir: pathlib.Path | None) -> bool:
    """Whether features come from .npy files (a `features` column or `features_dir`)."""
    return features_dir is not None or any(item.features for item in items)


def peek_feature_dim(items: list[SourceItem], features_dir: pathlib.Path | None) -> int:
    """F of the first readable precomputed (T, F) array among `items` (the TFDS spec needs F
    before extraction starts); LayoutError when there is none."""
    for item in items:
        path = _features_path(item, features_dir)
        if path is None:
            continue
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception:  # missing or unreadable ones are counted later, per item
            continue
        if arr.ndim == 2:
            return int(arr.shape[1])
    raise LayoutError("no readable (T, F) .npy feature file found; pass feature_dim=F")
