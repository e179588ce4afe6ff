"""`prepare`: build a corpus into a TFDS folder, index it, and write `prepare_report.json`.

Prepared layout: `<data_dir>/hrf_<name>/<config>/1.0.0/` holding the TFDS files plus
`prepare_report.json`, `hrf_index.npz` (per-split labels, speakers, groups, ids, frame
counts and per-utterance feature sums for normalisation) and `hrf_options.json`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil

import numpy as np

from hrf_jax.audio import MelSettings
from hrf_jax.data import builders, corpora, synthetic

CORPORA = ("synthetic", "iemocap", "daic_woz", "m3ed", "csv", "ravdess", "crema_d")
_MEL_OPTIONS = ("num_mels", "win_length", "hop_length", "n_fft", "fmin", "fmax", "htk")
_COMMON_OPTIONS = {"features_dir": None, "feature_dim": None, "frame_rate": 100.0}
_CORPUS_OPTIONS = {
    "synthetic": {f.name: f.default for f in dataclasses.fields(synthetic.SyntheticConfig)},
    "iemocap": {"classes": list(corpora.IEMOCAP_CLASSES), "merge_exc": True},
    "daic_woz": {"balance": None},
    "m3ed": {"split_seed": 0},
    "csv": {"classes": None},
    "ravdess": {"classes": list(corpora.RAVDESS_CLASSES)},
    "crema_d": {"classes": list(corpora.CREMAD_CLASSES)},
}
REPORT = "prepare_report.json"
INDEX = "hrf_index.npz"
OPTIONS = "hrf_options.json"


def default_data_dir() -> pathlib.Path:
    """`$HRF_JAX_DATA`, else `~/hrf_jax_data`."""
    return pathlib.Path(os.environ.get("HRF_JAX_DATA", "~/hrf_jax_data")).expanduser()


def _canonical_options(name: str, manifest: pathlib.Path | None, options: dict) -> dict:
    """Options that change the stored data, minus those left at their defaults."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    allowed = {**_COMMON_OPTIONS, **_CORPUS_OPTIONS[name],
               **{k: getattr(MelSettings(), k) for k in _MEL_OPTIONS}}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for {name}; allowed: {sorted(allowed)}")
    out = {}
    for key, value in sorted(options.items()):
        if isinstance(value, pathlib.Path):
            value = str(value.resolve())
        if isinstance(value, tuple):
            value = list(value)
        if value is not None and value != allowed[key]:
            out[key] = value
    if manifest is not None:
        out["manifest"] = str(pathlib.Path(manifest).resolve())  # a manifest is a corpus
    return out


def config_name(name: str, manifest: pathlib.Path | None = None, **options) -> str:
    """`default` for default options, else a short hash of the data-changing options."""
    canon = _canonical_options(name, manifest, options)
    if not canon:
        return "default"
    return "o" + hashlib.sha1(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:10]


def dataset_dir(name: str, data_dir: str | pathlib.Path, config: str = "default") -> pathlib.Path:
    """Folder a prepared configuration lives in."""
    return pathlib.Path(data_dir).expanduser() / f"hrf_{name}" / config / builders.VERSION


def _build_spec(name: str, manual_dir, manifest, workers: int, options: dict) -> builders.BuildSpec:
    canon = _canonical_options(name, manifest, options)
    settings = MelSettings(**{k: options[k] for k in _MEL_OPTIONS if k in options})
    if name == "synthetic":
        classes = synthetic.CLASS_NAMES
        synthetic.SyntheticConfig(**builders.synthetic_options(options))  # validate early
    elif name == "iemocap":
        classes = tuple(options.get("classes") or corpora.IEMOCAP_CLASSES)
    elif name == "daic_woz":
        classes = corpora.DAIC_CLASSES
    elif name == "m3ed":
        classes = corpora.M3ED_CLASSES
    elif name in ("ravdess", "crema_d"):
        classes = tuple(options.get("classes") or _CORPUS_OPTIONS[name]["classes"])
    else:
        classes = tuple(options["classes"]) if options.get("classes") else _manifest_labels(
            manifest)
    if name in ("iemocap", "daic_woz", "ravdess", "crema_d"):
        if manual_dir is None or not pathlib.Path(manual_dir).is_dir():
            raise corpora.LayoutError(f"{name} needs --manual-dir, an existing folder "
                                      f"(got {manual_dir})")
    if name in ("m3ed", "csv") and manifest is None:
        raise corpora.LayoutError(f"{name} needs --manifest FILE (CSV with path,label,speaker)")
    features_dir = options.get("features_dir")
    features_dir = pathlib.Path(features_dir) if features_dir else None
    feature_dim = options.get("feature_dim") or (
        _peek_feature_dim(features_dir, manifest) if features_dir or _has_features_column(
            manifest) else settings.num_mels)
    return builders.BuildSpec(
        corpus=name, config_name=config_name(name, manifest, **options), options=canon,
        settings=settings, class_names=classes, feature_dim=int(feature_dim),
        manual_dir=pathlib.Path(manual_dir) if manual_dir else None,
        manifest=pathlib.Path(manifest) if manifest else None, features_dir=features_dir,
        workers=workers)


def _manifest_labels(manifest) -> tuple[str, ...]:
    rows = corpora._manifest_rows(pathlib.Path(manifest), ("path", "label", "speaker"))
    return tuple(sorted({(r.get("label") or "").strip() for r in rows} - {""}))


def _has_features_column(manifest) -> bool:
    if manifest is None or not pathlib.Path(manifest).is_file():
        return False
    with open(manifest) as fh:
        return "features" in fh.readline().strip().split(",")


def _peek_feature_dim(features_dir: pathlib.Path | None, manifest) -> int:
    # The TFDS feature spec needs F up front: take it from the first readable array.
    candidates = sorted(features_dir.glob("*.npy")) if features_dir else []
    if manifest is not None and not candidates:
        base = pathlib.Path(manifest).parent
        rows = corpora._manifest_rows(pathlib.Path(manifest), ("path", "label", "speaker"))
        candidates = [base / r["features"] for r in rows if (r.get("features") or "").strip()]
    for path in candidates:
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception:  # unreadable ones are counted later, per item
            continue
        if arr.ndim == 2:
            return int(arr.shape[1])
    raise corpora.LayoutError("no readable (T, F) .npy feature file found; pass feature_dim=F")


def prepare(name: str, *, data_dir: str | pathlib.Path | None = None,
            manual_dir: str | pathlib.Path | None = None,
            manifest: str | pathlib.Path | None = None, workers: int = 2,
            overwrite: bool = False, verbose: bool = True, **options) -> pathlib.Path:
    """Build corpus `name` into `data_dir`; return the prepared folder (reused if present)."""
    data_dir = pathlib.Path(data_dir).expanduser() if data_dir else default_data_dir()
    spec = _build_spec(name, manual_dir, manifest, workers, options)
    out = dataset_dir(name, data_dir, spec.config_name)
    if (out / REPORT).is_file() and not overwrite:
        if verbose:
            print(f"{name}: already prepared at {out}")
        return out
    if out.exists():
        shutil.rmtree(out)
    builder = builders.BUILDERS[name](spec, data_dir)
    builder.download_and_prepare(download_config=_download_config(spec))
    out = pathlib.Path(builder.data_dir)
    report = _index_and_report(name, builder, out)
    report["skipped"] = dict(sorted(spec.skips.counts.items()))
    (out / OPTIONS).write_text(json.dumps({
        "corpus": name, "options": spec.options, "class_names": list(spec.class_names),
        "feature_dim": spec.feature_dim,
        # Precomputed features keep the rate the user documents; log-Mel has its hop's rate.
        "frame_rate": float(options.get("frame_rate") or _COMMON_OPTIONS["frame_rate"])
        if spec.features_dir or _has_features_column(manifest) else spec.settings.frame_rate,
        "mel_settings": dataclasses.asdict(spec.settings),
        "num_source_items": spec.num_source_items}, indent=1))
    (out / REPORT).write_text(json.dumps(report, indent=1))
    if verbose:
        _print_summary(report, spec.skips, out)
    return out


def _download_config(spec: builders.BuildSpec):
    import tensorflow_datasets as tfds

    return tfds.download.DownloadConfig(
        manual_dir=str(spec.manual_dir) if spec.manual_dir else None)


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
    print(f"{report['dataset']}: kept {report['num_examples']} examples -> {out}")
    print("  per class: " + ", ".join(f"{k}={v}" for k, v in report["per_class"].items()))
    for split, info in report.get("per_split", {}).items():
        print(f"  {split}: {info['num_examples']}")
    for reason, count in sorted(skips.counts.items()):
        print(f"  skipped {count} ({reason}), e.g. " + "; ".join(skips.examples[reason]))


def ensure_prepared(name: str, data_dir: str | pathlib.Path | None = None,
                    **options) -> pathlib.Path:
    """Prepare on first use, reuse the prepared folder afterwards."""
    return prepare(name, data_dir=data_dir, verbose=False, **options)


def register(subparsers) -> argparse.ArgumentParser:
    """Add `prepare NAME --manual-dir DIR --data-dir OUT ...` to an argparse subparsers object."""
    p = subparsers.add_parser("prepare", help="build a corpus into the TFDS data folder")
    p.add_argument("name", choices=CORPORA)
    p.add_argument("--data-dir", type=pathlib.Path, default=None,
                   help="output root (default: $HRF_JAX_DATA or ~/hrf_jax_data)")
    p.add_argument("--manual-dir", type=pathlib.Path, default=None,
                   help="corpus folder (IEMOCAP_full_release, DAIC-WOZ, RAVDESS, CREMA-D root)")
    p.add_argument("--manifest", type=pathlib.Path, default=None, help="CSV for csv/m3ed")
    p.add_argument("--features-dir", type=pathlib.Path, default=None,
                   help="folder of <id>.npy (T, F) features to use instead of log-Mel")
    p.add_argument("--frame-rate", type=float, default=None,
                   help="frames per second of precomputed features (default 100)")
    p.add_argument("--num-mels", type=int, default=None)
    p.add_argument("--num-utterances", type=int, default=None, help="synthetic only")
    p.add_argument("--num-speakers", type=int, default=None, help="synthetic only")
    p.add_argument("--difficulty", type=float, default=None, help="synthetic only")
    p.add_argument("--seed", type=int, default=None, help="synthetic only")
    p.add_argument("--balance", type=int, default=None,
                   help="daic_woz: keep the N longest turns per participant")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    options = {k: v for k, v in {
        "features_dir": args.features_dir, "frame_rate": args.frame_rate,
        "num_mels": args.num_mels, "num_utterances": args.num_utterances,
        "num_speakers": args.num_speakers, "difficulty": args.difficulty, "seed": args.seed,
        "balance": args.balance}.items() if v is not None}
    try:
        prepare(args.name, data_dir=args.data_dir, manual_dir=args.manual_dir,
                manifest=args.manifest, workers=args.workers, overwrite=args.overwrite,
                **options)
    except (corpora.LayoutError, TypeError, ValueError) as err:
        print(f"hrf-jax prepare: {err}")
        return 2
    return 0
