"""TFDS builders (array_record, read back with data sources, no TensorFlow), one per corpus.

Stored per example: `feats` (T, F) float16 log-Mel or precomputed features, `label`,
`speaker`, `group`, `id`. float16 halves disk use at about three significant digits, finer
than the spread of log-Mel values (floored at log(MelSettings.log_floor)). Corpora with an
official split store train/validation/test; the others store one split `full`, and the folds
are chosen at load time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import multiprocessing
import os
import pathlib
import sys
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from hrf_jax.audio import MelSettings
from hrf_jax.data import corpora, features
from hrf_jax.data.registry import get_corpus

FULL_SPLIT = "full"
VERSION = "1.0.0"
_CHUNK = 8  # worker jobs handed out at a time: fewer round trips, still even shares


@dataclasses.dataclass
class BuildSpec:
    """Everything a builder needs to store one corpus configuration: the items read, and how
    to turn them into features."""

    corpus: str
    config_name: str
    settings: MelSettings
    class_names: tuple[str, ...]
    feature_dim: int
    items: list[corpora.SourceItem]
    skips: corpora.SkipLog
    features_dir: pathlib.Path | None = None
    workers: int = 1


class CorpusBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One prepared configuration of one corpus; `spec` decides which."""

    VERSION = tfds.core.Version(VERSION)
    # Nothing is downloaded, so there is no checksums file to look up; TFDS's lookup of the
    # builder's source folder also needs `importlib_resources`, which is not a dependency.
    _checksums_path = None

    def __init__(self, spec: BuildSpec, data_dir: pathlib.Path):
        self.spec = spec
        config = tfds.core.BuilderConfig(name=spec.config_name, version=VERSION)
        super().__init__(data_dir=str(data_dir), config=config, file_format="array_record")

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly: `dataset_info_from_configs` raises NotADirectoryError for a builder
        # defined outside a registered TFDS package folder.
        corpus = get_corpus(self.spec.corpus)
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"hrf-jax corpus {corpus.name}: {corpus.summary}",
            features=tfds.features.FeaturesDict({
                "feats": tfds.features.Tensor(shape=(None, self.spec.feature_dim),
                                              dtype=np.float16),
                "label": tfds.features.ClassLabel(names=list(self.spec.class_names)),
                "speaker": tfds.features.Text(),
                "group": tfds.features.Text(),
                "id": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager) -> dict:
        splits: dict[str, list[corpora.SourceItem]] = {}
        for item in self.spec.items:
            splits.setdefault(item.split or FULL_SPLIT, []).append(item)
        extract = features.Extractor(self.spec.settings, self.spec.features_dir,
                                    self.spec.feature_dim)
        generators = {}
        for split, items in sorted(splits.items()):
            # TFDS refuses a split that yields nothing, so find each split's first good item
            # now; a split whose items all fail is left out (every item counted as skipped).
            for k, item in enumerate(items):
                (result,) = extract.many([item])
                if self._keep(item, result):
                    generators[split] = self._generate_examples(extract, split, item, result,
                                                                 items[k + 1:])
                    break
        if not generators:
            raise corpora.LayoutError(f"{self.spec.corpus}: no usable example; skipped "
                                      f"{dict(self.spec.skips.counts)}")
        return generators

    def _keep(self, item: corpora.SourceItem, result: np.ndarray | str) -> bool:
        if isinstance(result, str):  # the reason it was skipped
            self.spec.skips.add(result, item.features or item.path or item.id)
            return False
        return True

    def _generate_examples(self, extract: features.Extractor, split: str,
                           first: corpora.SourceItem, first_feats: np.ndarray,
                           rest: list[corpora.SourceItem]) -> Iterator[tuple[str, dict]]:
        yield first.id, self._example(first, first_feats)
        bar = tqdm.tqdm(total=len(rest), desc=f"{self.spec.corpus} {split}", unit="utt")
        for run, results in self._extracted(extract, _runs(rest)):
            bar.update(len(run))
            for item, result in zip(run, results, strict=True):
                if self._keep(item, result):
                    yield item.id, self._example(item, result)
        bar.close()

    def _extracted(self, extract: features.Extractor, runs: list[list[corpora.SourceItem]]
                   ) -> Iterator[tuple[list[corpora.SourceItem], list]]:
        if self.spec.workers > 1 and len(runs) > 1:
            # spawn, not fork: the parent may already run JAX's threads.
            with _one_blas_thread_each(), multiprocessing.get_context("spawn").Pool(
                    self.spec.workers) as pool:
                yield from zip(runs, pool.imap(extract.many, runs, chunksize=_CHUNK), strict=True)
        else:
            for run in runs:
                yield run, extract.many(run)

    def _example(self, item: corpora.SourceItem, feats: np.ndarray) -> dict:
        return {"feats": feats, "label": self.spec.class_names.index(item.label),
                "speaker": item.speaker, "group": item.group, "id": item.id}


_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _one_blas_thread_each() -> Iterator[None]:
    """Worker processes spawned inside inherit one BLAS thread each: every worker's BLAS
    would otherwise start a thread per core (the mel filterbank product), workers x cores
    threads in all. 8 workers on 2 cores prepared 960 utterances in 19.3-20.0 s instead of
    26.4-27.1 s (alternated). On a 16-core machine 16 workers had reached only 38 utterances/s,
    presumably the same oversubscription (not re-measured there)."""
    saved = {k: os.environ.get(k) for k in _BLAS_THREADS}
    os.environ.update(dict.fromkeys(_BLAS_THREADS, "1"))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def _runs(items: list[corpora.SourceItem]) -> list[list[corpora.SourceItem]]:
    """Consecutive items cut from the same file go to one worker, which decodes it once."""
    runs: list[list[corpora.SourceItem]] = []
    for item in items:
        if runs and item.path is not None and runs[-1][-1].path == item.path:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


@functools.cache
def builder_class(name: str) -> type[CorpusBuilder]:
    """The builder of registered corpus `name`; TFDS names its folder `hrf_<name>`."""
    get_corpus(name)  # an unknown name fails here, naming the choices
    title = "".join(part.title() for part in name.split("_"))
    return type(f"Hrf{title}", (CorpusBuilder,), {"name": f"hrf_{name}", "__module__": __name__},
                skip_registration=True)


def quiet_tfds() -> None:
    """No TFDS progress bars: nested ones garble logs, and preparation reports its own counts."""
    tfds.disable_progress_bar()


def tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


@contextlib.contextmanager
def splits_in_memory_without_tensorflow() -> Iterator[None]:
    """TFDS keeps a split's serialized examples in memory up to 1 GB and spills the rest to
    temporary files through ``tf.io.gfile``, i.e. TensorFlow, which the core install does not
    have: there a split over 1 GB failed after all its features were extracted ("No module
    named 'tensorflow'"; seen with the 12,800-utterance train split of the HRF study's 4x
    synthetic bed). Without TensorFlow, keep each split in memory instead: it needs about the
    split's stored size in RAM (float16 features: about 0.1 MB per 3 s utterance)."""
    if tensorflow_installed():
        yield
        return
    from tensorflow_datasets.core import shuffle

    saved = shuffle.MAX_MEM_BUFFER_SIZE
    shuffle.MAX_MEM_BUFFER_SIZE = sys.maxsize
    try:
        yield
    finally:
        shuffle.MAX_MEM_BUFFER_SIZE = saved
