"""TFDS builders (array_record, read back with data sources, no TensorFlow) for every corpus.

Stored per example: `feats` (T, F) float16 log-Mel or precomputed features (float16 halves
disk use; log-Mel values lie in about [-14, 12], where float16 keeps ~0.01 resolution),
`label`, `speaker`, `group`, `id`. Corpora with an official split store train/validation/
test; the others store one split `full` and the folds are chosen at load time.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import pathlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from hrf_jax.audio import AudioError, MelSettings, logmel_np
from hrf_jax.data import corpora, synthetic

FULL_SPLIT = "full"
VERSION = "1.0.0"


@dataclasses.dataclass
class BuildSpec:
    """Everything a builder needs to generate one corpus configuration."""

    corpus: str
    config_name: str
    options: dict
    settings: MelSettings
    class_names: tuple[str, ...]
    feature_dim: int
    manual_dir: pathlib.Path | None = None
    manifest: pathlib.Path | None = None
    features_dir: pathlib.Path | None = None
    workers: int = 1
    skips: corpora.SkipLog = dataclasses.field(default_factory=corpora.SkipLog)
    num_source_items: int = 0


def read_items(spec: BuildSpec) -> list[corpora.SourceItem]:
    """Source items of a real corpus (reader skips counted in spec.skips)."""
    opts, skips = spec.options, spec.skips
    if spec.corpus == "iemocap":
        merge = {"exc": "hap"} if opts.get("merge_exc", True) else {}
        return corpora.read_iemocap(spec.manual_dir, skips, spec.class_names, merge)
    if spec.corpus == "daic_woz":
        return corpora.read_daic_woz(spec.manual_dir, skips, opts.get("balance"))
    if spec.corpus == "m3ed":
        return corpora.read_m3ed(spec.manifest, skips, opts.get("split_seed", 0))
    if spec.corpus in ("ravdess", "crema_d"):
        return corpora.read_filename_coded(spec.manual_dir, spec.corpus, skips, spec.class_names)
    if spec.corpus == "csv":
        return corpora.read_manifest(spec.manifest, skips, spec.class_names)
    raise ValueError(f"unknown corpus {spec.corpus!r}")


def _synth_example(args: tuple[synthetic.SyntheticConfig, MelSettings, int]) -> tuple:
    cfg, settings, index = args
    wave, label, speaker = synthetic.synthesize(cfg, index)
    return index, logmel_np(wave, settings).astype(np.float16), label, speaker


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
        # dataset_info_from_configs needs a registered package folder (ENVIRONMENT.md).
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"hrf-jax corpus {self.spec.corpus}",
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
        if self.spec.corpus == "synthetic":
            cfg = synthetic.SyntheticConfig(**synthetic_options(self.spec.options))
            self.spec.num_source_items = cfg.num_utterances
            by_split: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
            for i in range(cfg.num_utterances):
                _, speaker = synthetic.utterance_plan(cfg, i)
                by_split[synthetic.speaker_split(speaker, cfg.num_speakers)].append(i)
            return {s: self._generate_synthetic(cfg, idx) for s, idx in by_split.items() if idx}
        items = read_items(self.spec)
        self.spec.num_source_items = len(items) + self.spec.skips.total()
        splits: dict[str, list[corpora.SourceItem]] = {}
        for item in items:
            splits.setdefault(item.split or FULL_SPLIT, []).append(item)
        extract = corpora.Extractor(self.spec.settings, self.spec.features_dir)
        generators = {}
        for split, its in sorted(splits.items()):
            # TFDS refuses a split that yields nothing, so find each split's first good item
            # now; a split whose items all fail is left out (every item counted as skipped).
            for k, item in enumerate(its):
                feats = self._extract(extract, item)
                if feats is not None:
                    generators[split] = self._generate_examples(extract, item, feats, its[k + 1:])
                    break
        if not generators:
            raise corpora.LayoutError(f"{self.spec.corpus}: no usable example; skipped "
                                      f"{dict(self.spec.skips.counts)}")
        return generators

    def _extract(self, extract: corpora.Extractor, item: corpora.SourceItem
                 ) -> np.ndarray | None:
        try:
            feats = extract(item)
            if feats.shape[1] != self.spec.feature_dim:
                raise AudioError("bad_feature_shape", f"{item.id}: {feats.shape[1]} features, "
                                 f"expected {self.spec.feature_dim}")
        except AudioError as err:
            self.spec.skips.add(err.reason, item.features or item.path or item.id)
            return None
        return feats

    def _generate_examples(self, extract: corpora.Extractor, first: corpora.SourceItem,
                           first_feats: np.ndarray, rest: list[corpora.SourceItem]
                           ) -> Iterator[tuple[str, dict]]:
        yield first.id, self._example(first, first_feats)
        for item in tqdm.tqdm(rest, desc=f"{self.spec.corpus} features", unit="utt"):
            feats = self._extract(extract, item)
            if feats is not None:
                yield item.id, self._example(item, feats)

    def _example(self, item: corpora.SourceItem, feats: np.ndarray) -> dict:
        return {"feats": feats.astype(np.float16),
                "label": self.spec.class_names.index(item.label),
                "speaker": item.speaker, "group": item.group, "id": item.id}

    def _generate_synthetic(self, cfg: synthetic.SyntheticConfig, indices: list[int]
                            ) -> Iterator[tuple[str, dict]]:
        jobs = [(cfg, self.spec.settings, i) for i in indices]
        bar = dict(total=len(jobs), desc="synthetic", unit="utt")
        if self.spec.workers > 1:
            # spawn, not fork: the parent may already run JAX's threads.
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(self.spec.workers) as pool:
                yield from self._synthetic_examples(
                    tqdm.tqdm(pool.imap(_synth_example, jobs, chunksize=8), **bar))
        else:
            yield from self._synthetic_examples(tqdm.tqdm(map(_synth_example, jobs), **bar))

    def _synthetic_examples(self, results) -> Iterator[tuple[str, dict]]:
        for index, feats, label, speaker in results:
            uid = f"syn{index:06d}"
            yield uid, {"feats": feats, "label": label, "speaker": f"spk{speaker:02d}",
                        "group": f"spk{speaker:02d}", "id": uid}


def synthetic_options(options: dict) -> dict:
    """The subset of `options` that configures the synthesizer."""
    fields = {f.name for f in dataclasses.fields(synthetic.SyntheticConfig)}
    return {k: v for k, v in options.items() if k in fields}


class HrfSynthetic(CorpusBuilder, skip_registration=True):
    """The embedded synthetic corpus (folder `hrf_synthetic`)."""


class HrfIemocap(CorpusBuilder, skip_registration=True):
    """IEMOCAP from `IEMOCAP_full_release` (folder `hrf_iemocap`)."""


class HrfDaicWoz(CorpusBuilder, skip_registration=True):
    """DAIC-WOZ participant turns (folder `hrf_daic_woz`)."""


class HrfM3ed(CorpusBuilder, skip_registration=True):
    """M3ED from a manifest (folder `hrf_m3ed`)."""


class HrfCsv(CorpusBuilder, skip_registration=True):
    """Any corpus from a `path,label,speaker` manifest (folder `hrf_csv`)."""


class HrfRavdess(CorpusBuilder, skip_registration=True):
    """RAVDESS speech, labels from file names (folder `hrf_ravdess`)."""


class HrfCremaD(CorpusBuilder, skip_registration=True):
    """CREMA-D, labels from file names (folder `hrf_crema_d`)."""


BUILDERS = {"synthetic": HrfSynthetic, "iemocap": HrfIemocap, "daic_woz": HrfDaicWoz,
            "m3ed": HrfM3ed, "csv": HrfCsv, "ravdess": HrfRavdess, "crema_d": HrfCremaD}
