"""`prepare`: build a corpus into a TFDS folder, index it, and write `prepare_report.json`.

Prepared layout: `<data_dir>/hrf_<name>/<config>/1.0.0/` holding the TFDS files plus
`prepare_report.json`, `hrf_index.npz` (per-split labels, speakers, groups, ids, frame
counts and per-utterance feature sums for normalisation) and `hrf_options.json`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
from typing import Any

import numpy as np

from hrf_jax.audio import MelSettings
from hrf_jax.data import builders, corpora, features
from hrf_jax.data.registry import Corpus, get_corpus
from hrf_jax.logs import get_logger

_MEL_OPTIONS = ("num_mels", "win_length", "hop_length", "n_fft", "fmin", "fmax", "htk")
# Options of every corpus; frame_rate is the rate of precomputed features (log-Mel has its
# hop's rate).
_COMMON_OPTIONS = {"features_dir": None, "feature_dim": None, "frame_rate": 100.0}
REPORT = "prepare_report.json"
INDEX = "hrf_index.npz"
OPTIONS = "hrf_options.json"


def default_data_dir() -> pathlib.Path:
    """`$HRF_JAX_DATA`, else `~/hrf_jax_data`."""
    return pathlib.Path(os.environ.get("HRF_JAX_DATA", "~/hrf_jax_data")).expanduser()


def _plain(value: Any) -> Any:
    # The JSON form options are compared and hashed in: resolved paths, lists for tuples.
    if isinstance(value, pathlib.Path):
        return str(value.resolve())
    if isinstance(value, tuple):
        return list(value)
    return value


def _canonical_options(name: str, manifest: pathlib.Path | None, options: dict) -> dict:
    """Options that change the stored data, minus those left at their defaults."""
    corpus = get_corpus(name)
    allowed = {**_COMMON_OPTIONS, **corpus.options,
               **{k: getattr(MelSettings(), k) for k in _MEL_OPTIONS}}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for {name}; allowed: {sorted(allowed)}")
    out = {}
    for key, value in sorted(options.items()):
        value = _plain(value)
        if value is not None and value != _plain(allowed[key]):
            out[key] = value
    if manifest is not None:
        out["manifest"] = str(pathlib.Path(manifest).resolve())  # a manifest is a corpus
    return out


def _hashed(canon: dict) -> str:
    if not canon:
        return "default"
    return "o" + hashlib.sha1(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:10]


def config_name(name: str, manifest: pathlib.Path | None = None, **options) -> str:
    """`default` for default options, else a short hash of the data-changing options."""
    return _hashed(_canonical_options(name, manifest, options))


def dataset_dir(name: str, data_dir: str | pathlib.Path, config: str = "default") -> pathlib.Path:
    """Folder a prepared configuration lives in."""
    return pathlib.Path(data_dir).expanduser() / f"hrf_{name}" / config / builders.VERSION


def _source(corpus: Corpus, manual_dir: str | pathlib.Path | None,
            manifest: str | pathlib.Path | None) -> pathlib.Path | None:
    """What the reader reads, by what the corpus needs; LayoutError when it is not given."""
    if corpus.needs == "manual_dir":
        if manual_dir is None or not pathlib.Path(manual_dir).is_dir():
            raise corpora.LayoutError(f"{corpus.name} needs --manual-dir, an existing folder: "
                                      f"{corpus.source_help} (got {manual_dir})")
        return pathlib.Path(manual_dir)
    if corpus.needs == "manifest":
        if manifest is None:
            raise corpora.LayoutError(f"{corpus.name} needs --manifest FILE, "
                                      f"{corpus.source_help}")
        return pathlib.Path(manifest)
    return None


def _build_spec(corpus: Corpus, config: str, manual_dir: str | pathlib.Path | None,
                manifest: str | pathlib.Path | None, workers: int, options: dict
                ) -> builders.BuildSpec:
    """Read the corpus's items (a missing or wrong source fails here, before anything is
    written) and settle its class names and feature dimension."""
    settings = MelSettings(**{k: options[k] for k in _MEL_OPTIONS
                              if options.get(k) is not None})
    classes = options.get("classes") or corpus.classes
    classes = tuple(classes) if classes else None
    reader_options = {k: default if options.get(k) is None else options[k]
                      for k, default in corpus.options.items() if k != "classes"}
    skips = corpora.SkipLog()
    items = corpus.read(_source(corpus, manual_dir, manifest), skips, classes, **reader_options)
    features_dir = pathlib.Path(options["features_dir"]) if options.get("features_dir") else None
    feature_dim = options.get("feature_dim") or (
        features.peek_feature_dim(items, features_dir)
        if features.has_precomputed(items, features_dir) else settings.num_mels)
    return builders.BuildSpec(
        corpus=corpus.name, config_name=config, settings=settings,
        class_names=classes or tuple(sorted({item.label for item in items})),
        feature_dim=int(feature_dim), items=items, skips=skips, features_dir=features_dir,
        workers=workers)


def prepare(name: str, *, data_dir: str | pathlib.Path | None = None,
            manual_dir: str | pathlib.Path | None = None,
            manifest: str | pathlib.Path | None = None, workers: int = 2,
            overwrite: bool = False, verbose: bool = True, **options) -> pathlib.Path:
    """Build corpus `name` into `data_dir`; return the prepared folder (reused if present).

    `workers` > 1 extracts features in that many spawned processes.
    """
    data_dir = pathlib.Path(data_dir).expanduser() if data_dir else default_data_dir()
    canon = _canonical_options(name, manifest, options)
    out = dataset_dir(name, data_dir, _hashed(canon))
    if (out / REPORT).is_file() and not overwrite:
        if verbose:
            get_logger().info(f"{name}: already prepared at {out}")
        return out
    spec = _build_spec(get_corpus(name), out.parent.name, manual_dir, manifest, workers, options)
    num_source_items = len(spec.items) + spec.skips.total()  # before extraction skips any
    precomputed = features.has_precomputed(spec.items, spec.features_dir)
    if out.exists():
        shutil.rmtree(out)
    builder = builders.builder_class(name)(spec, data_dir)
    builders.quiet_tfds()
    with builders.splits_in_memory_without_tensorflow():
        builder.download_and_prepare()
    out = pathlib.Path(builder.data_dir)
    report = _index_and_report(name, builder, out)
    report["skipped"] = dict(sorted(spec.skips.counts.items()))
    (out / OPTIONS).write_text(json.dumps({
        "corpus": name, "options": canon, "class_names": list(spec.class_names),
        "feature_dim": spec.feature_dim,
        "frame_rate": float(options.get("frame_rate") or _COMMON_OPTIONS["frame_rate"])
        if precomputed else spec.settings.frame_rate,
        "mel_settings": dataclasses.asdict(spec.settings),
        "num_source_items": num_source_items}, indent=1))
    (out / REPORT).write_text(json.dumps(report, indent=1))
    if verbose:
        _print_summary(report, spec.skips, out)
    return out


def _index_and_report(name: str, builder, out: pathlib.Path) -> dict:
    """Read every stored example once: write hrf_index.npz and return the kept counts."""
    sources = builder.as_data_source()
    class_names = builder.info.features["label"].names
    per_class, per_group = collections.Counter(), collections.Counter()
    per_split, arrays = {}, {}
    for split in sorted(sources):
        src = sources[split]
        ids, labels, speakers, groups, frames, sums, sumsq = [], [], [], [], [], [], []
        for i in range(len(src)):
            ex = src[i]
            feats = np.asarray(ex["feats"], np.float64)
            ids.append(ex["id"].decode())
            labels.append(int(ex["label"]))
            speakers.append(ex["speaker"].decode())
            groups.append(ex["group"].decode())
            frames.append(feats.shape[0])
            sums.append(feats.sum(0))
            sumsq.append((feats**2).sum(0))
        counts = collections.Counter(class_names[k] for k in labels)
        per_class.update(counts)
        per_group.update(groups)
        per_split[split] = {"num_examples": len(ids),
                            "per_class": {c: counts.get(c, 0) for c in class_names}}
        dim = builder.info.features["feats"].shape[-1]
        arrays.update({
            f"{split}/id": np.array(ids, dtype=str), f"{split}/label": np.array(labels, np.int64),
            f"{split}/speaker": np.array(speakers, dtype=str),
            f"{split}/group": np.array(groups, dtype=str),
            f"{split}/frames": np.array(frames, np.int64),
            f"{split}/sum": np.array(sums, np.float64).reshape(-1, dim),
            f"{split}/sumsq": np.array(sumsq, np.float64).reshape(-1, dim)})
    np.savez(out / INDEX, **arrays)
    report = {"dataset": name, "num_examples": sum(v["num_examples"] for v in per_split.values()),
              "per_class": {c: per_class.get(c, 0) for c in class_names},
              "per_group": dict(sorted(per_group.items()))}
    if set(per_split) != {builders.FULL_SPLIT}:
        report["per_split"] = per_split
    return report


def _print_summary(report: dict, skips: corpora.SkipLog, out: pathlib.Path) -> None:
    lines = [f"{report['dataset']}: kept {report['num_examples']} examples -> {out}",
             "  per class: " + ", ".join(f"{k}={v}" for k, v in report["per_class"].items())]
    lines += [f"  {split}: {info['num_examples']}"
              for split, info in report.get("per_split", {}).items()]
    lines += [f"  skipped {count} ({reason}), e.g. " + "; ".join(skips.examples[reason])
              for reason, count in sorted(skips.counts.items())]
    get_logger().info("\n".join(lines))


def ensure_prepared(name: str, data_dir: str | pathlib.Path | None = None,
                    **options) -> pathlib.Path:
    """Prepare on first use, reuse the prepared folder afterwards."""
    return prepare(name, data_dir=data_dir, verbose=False, **options)
