"""Prepared corpora -> splits/folds -> batches, on top of TFDS data sources and grain.

Normalisation statistics (`normalize="corpus"`) pool the per-utterance feature sums stored
at prepare time over the training split of the chosen fold only.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds

from hrf_jax.audio import FeatureStats, corpus_stats, utterance_normalize
from hrf_jax.data import preparation as prep
from hrf_jax.data.builders import FULL_SPLIT
from hrf_jax.data.registry import PROTOCOLS, get_corpus

_READ = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)  # one background thread


class Source:
    """Random-access split: `src[i]` -> dict(feats=(T, F) float32, label, speaker, group, id)."""

    def __init__(self, data_source, rows: np.ndarray, meta: dict, normalize: str | None,
                 stats: FeatureStats | None):
        self._data, self._rows = data_source, rows
        self.labels = meta["label"][rows].astype(np.int64)
        self.lengths = meta["frames"][rows].astype(np.int64)
        self.speakers = meta["speaker"][rows]
        self.groups = meta["group"][rows]
        self.ids = meta["id"][rows]
        self._normalize, self._stats = normalize, stats

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> dict:
        ex = self._data[int(self._rows[i])]
        feats = np.asarray(ex["feats"], np.float32)
        if self._normalize == "corpus":
            feats = self._stats.apply(feats)
        elif self._normalize == "utterance":
            feats = utterance_normalize(feats)
        return {"feats": feats, "label": int(ex["label"]), "speaker": ex["speaker"].decode(),
                "group": ex["group"].decode(), "id": ex["id"].decode()}


class Dataset:
    """train / validation / test `Source`s of one corpus (and fold) with its class names."""

    def __init__(self, path: pathlib.Path, class_names: list[str], feature_dim: int,
                 frame_rate: float, train: Source, validation: Source, test: Source,
                 stats: FeatureStats | None):
        self.path, self.class_names, self.feature_dim = path, class_names, feature_dim
        self.frame_rate, self.stats = frame_rate, stats
        self.train, self.validation, self.test = train, validation, test

    def class_counts(self, split: str) -> np.ndarray:
        """(num_classes,) int64 examples per class in `split`."""
        return np.bincount(getattr(self, split).labels, minlength=len(self.class_names))


def _resolve_config(name: str, data_dir: pathlib.Path, manifest, options: dict) -> str:
    if options or manifest is not None:
        return prep.config_name(name, manifest, **options)
    root = data_dir / f"hrf_{name}"
    ready = sorted(p.parent.parent.name for p in root.glob(f"*/*/{prep.REPORT}"))
    if "default" in ready or not ready:
        return "default"
    if len(ready) > 1:
        raise ValueError(f"{root} holds several prepared configs {ready}; pass the options "
                         "used with prepare (or config=...)")
    return ready[0]


def fold_rows(speakers: np.ndarray, groups: np.ndarray, fold: int, protocol: str
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) row indices for one fold of a `full` split.

    loso: test = group `fold` (sorted); validation = one speaker of the next group.
    speaker: test = speaker `fold`; validation = another speaker of the same group, else the
    next speaker. Validation never shares a speaker with test.
    """
    if protocol == "loso":
        units = sorted(set(groups))
        if not 0 <= fold < len(units):
            raise ValueError(f"fold {fold} out of range: {len(units)} groups {units}")
        test = groups == units[fold]
        next_group = units[(fold + 1) % len(units)]
        val_speaker = sorted(set(speakers[groups == next_group]))[0]
    elif protocol == "speaker":
        units = sorted(set(speakers))
        if not 0 <= fold < len(units):
            raise ValueError(f"fold {fold} out of range: {len(units)} speakers {units}")
        test_speaker = units[fold]
        test = speakers == test_speaker
        group = groups[test][0]
        mates = sorted(set(speakers[groups == group]) - {test_speaker})
        val_speaker = mates[0] if mates else units[(fold + 1) % len(units)]
    else:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    val = (speakers == val_speaker) & ~test
    train = ~test & ~val
    return np.flatnonzero(train), np.flatnonzero(val), np.flatnonzero(test)


def load_dataset(name: str, data_dir: str | pathlib.Path | None = None, *,
                 fold: int | None = None, protocol: str | None = None,
                 normalize: str | None = "corpus", config: str | None = None,
                 manifest: str | pathlib.Path | None = None, **options) -> Dataset:
    """Open a prepared corpus; corpora without official splits are split by `fold`/`protocol`.

    normalize: "corpus" (train-split mean/std), "utterance", or None.
    """
    if normalize not in ("corpus", "utterance", None, "none"):
        raise ValueError(f"normalize must be 'corpus', 'utterance' or None, got {normalize!r}")
    normalize = None if normalize == "none" else normalize
    get_corpus(name)  # an unknown name fails here, naming the choices
    data_dir = pathlib.Path(data_dir).expanduser() if data_dir else prep.default_data_dir()
    config = config or _resolve_config(name, data_dir, manifest, options)
    path = prep.dataset_dir(name, data_dir, config)
    if not (path / prep.REPORT).is_file():
        raise FileNotFoundError(f"{name} is not prepared under {path}; run "
                                f"`hrf-jax prepare {name} --data-dir {data_dir}` first")
    info = json.loads((path / prep.OPTIONS).read_text())
    index = np.load(path / prep.INDEX)
    sources = tfds.builder_from_directory(str(path)).as_data_source()
    splits = sorted({k.split("/")[0] for k in index.files})

    def meta(split: str) -> dict:
        return {k: index[f"{split}/{k}"] for k in ("id", "label", "speaker", "group", "frames",
                                                   "sum", "sumsq")}

    if splits == [FULL_SPLIT]:
        m = meta(FULL_SPLIT)
        rows = fold_rows(m["speaker"], m["group"], 0 if fold is None else fold,
                         protocol or "loso")
        parts = {s: (sources[FULL_SPLIT], r, m)
                 for s, r in zip(("train", "validation", "test"), rows, strict=True)}
    else:
        if fold not in (None, 0) or protocol is not None:
            raise ValueError(f"{name} has fixed train/validation/test splits: no folds")
        parts = {}
        for s in ("train", "validation", "test"):
            m = meta(s) if s in splits else _empty_meta(info["feature_dim"])
            parts[s] = (sources.get(s), np.arange(len(m["id"])), m)
    stats = None
    if normalize == "corpus":
        _, rows, m = parts["train"]
        stats = corpus_stats(m["sum"][rows], m["sumsq"][rows], m["frames"][rows])
    made = {s: Source(src, rows, m, normalize, stats) for s, (src, rows, m) in parts.items()}
    return Dataset(path, info["class_names"], info["feature_dim"], info["frame_rate"],
                   made["train"], made["validation"], made["test"], stats)


def _empty_meta(dim: int) -> dict:
    return {"id": np.array([], str), "label": np.array([], np.int64),
            "speaker": np.array([], str), "group": np.array([], str),
            "frames": np.array([], np.int64), "sum": np.zeros((0, dim)),
            "sumsq": np.zeros((0, dim))}


class TrainLoader:
    """Shuffled fixed-shape training batches: feats (B, max_frames, F), mask (B, T), label (B,).

    Order and crops depend only on (seed, epoch); `epoch(e, start=k)` skips k batches
    without loading them. `balanced=True` samples classes uniformly (with replacement).
    `host=(index, count)`: load only that host's contiguous share of every global batch
    (the rows `np.array_split` gives it); the shares of all hosts make the global batch.
    """

    def __init__(self, source: Source, batch_size: int = 32, max_frames: int = 300,
                 seed: int = 0, balanced: bool = False, drop_remainder: bool = True,
                 host: tuple[int, int] = (0, 1)):
        if len(source) == 0:
            raise ValueError("TrainLoader needs a non-empty source")
        if not 0 <= host[0] < host[1]:
            raise ValueError(f"TrainLoader host must be (index, count), 0 <= index < count; "
                             f"got {host}")
        self.source, self.batch_size, self.max_frames = source, batch_size, max_frames
        self.seed, self.balanced, self.drop_remainder = seed, balanced, drop_remainder
        self.host = host

    def __len__(self) -> int:
        n = len(self.source)
        return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """(len(self) * B or fewer,) source indices for `epoch`."""
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.source)
        if self.balanced:
            counts = np.bincount(self.source.labels)
            weights = 1.0 / counts[self.source.labels]
            return rng.choice(n, size=n, replace=True, p=weights / weights.sum())
        return rng.permutation(n)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
        """Batches of `epoch` from batch number `start` on, prefetched on a background thread."""
        order = self.order(epoch)
        plan = [(epoch, b, order[b * self.batch_size:(b + 1) * self.batch_size])
                for b in range(start, len(self))]
        return iter(grain.MapDataset.source(plan).map(self._load).to_iter_dataset(_READ))

    def _load(self, job: tuple[int, int, np.ndarray]) -> dict:
        epoch, b, indices = job
        rng = np.random.default_rng([self.seed, epoch, b, 1])  # crops: per (seed, epoch, batch)
        parts = np.array_split(indices, self.host[1])
        mine, first = parts[self.host[0]], sum(map(len, parts[:self.host[0]]))
        for i in indices[:first]:  # other hosts' crops, drawn so this host's are the global ones
            if self.source.lengths[i] > self.max_frames:
                rng.integers(0, int(self.source.lengths[i]) - self.max_frames + 1)
        dim = None
        feats, mask, labels = [], [], []
        for i in mine:
            ex = self.source[int(i)]
            x = ex["feats"]
            dim = x.shape[1]
            if x.shape[0] > self.max_frames:
                off = int(rng.integers(0, x.shape[0] - self.max_frames + 1))
                x = x[off:off + self.max_frames]
            pad = np.zeros((self.max_frames, dim), np.float32)
            pad[:x.shape[0]] = x
            feats.append(pad)
            mask.append(np.arange(self.max_frames) < x.shape[0])
            labels.append(ex["label"])
        return {"feats": np.stack(feats), "mask": np.stack(mask),
                "label": np.asarray(labels, np.int32)}


class EvalLoader:
    """Whole utterances padded to the smallest bucket >= length, in batches of `batch_size`.

    Utterances longer than `chunk_frames` are cut into equal chunks (<= chunk_frames each);
    `index` maps every row to its utterance, `valid` is False on rows padding the last batch.
    `host=(index, count)`: `feats`/`mask` hold only that host's rows (as in `TrainLoader`);
    `label`/`index`/`valid` stay those of the whole batch, to place gathered predictions.
    """

    def __init__(self, source: Source, batch_size: int = 32,
                 buckets: Sequence[int] = (100, 200, 300, 600, 1000), chunk_frames: int = 1000,
                 host: tuple[int, int] = (0, 1)):
        self.source, self.batch_size, self.chunk_frames = source, batch_size, chunk_frames
        self.host = host
        # a host may own no utterance of a short last batch: its zero rows need the width
        self._dim = source[0]["feats"].shape[1] if len(source) else 0
        self.buckets = sorted(set(buckets) | ({chunk_frames} if max(buckets) < chunk_frames
                                              else set()))
        pieces: dict[int, list[tuple[int, int, int]]] = {}
        for idx, length in enumerate(source.lengths):
            n_chunks = -(-int(length) // chunk_frames)
            bounds = np.linspace(0, int(length), n_chunks + 1).round().astype(int)
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                bucket = next(b for b in self.buckets if b >= hi - lo)
                pieces.setdefault(bucket, []).append((idx, int(lo), int(hi)))
        self._plan = [(bucket, items[k:k + batch_size])
                      for bucket, items in sorted(pieces.items())
                      for k in range(0, len(items), batch_size)]

    def __len__(self) -> int:
        return len(self._plan)

    def __iter__(self) -> Iterator[dict]:
        return iter(grain.MapDataset.source(self._plan).map(self._load).to_iter_dataset(_READ))

    def _load(self, job: tuple[int, list[tuple[int, int, int]]]) -> dict:
        bucket, items = job
        b = self.batch_size
        label = np.zeros((b,), np.int32)
        index = np.zeros((b,), np.int32)
        valid = np.zeros((b,), bool)
        for row, (idx, _, _) in enumerate(items):
            label[row], index[row], valid[row] = self.source.labels[idx], idx, True
        rows = np.array_split(np.arange(b), self.host[1])[self.host[0]]
        feats = np.zeros((len(rows), bucket, self._dim), np.float32)
        mask = np.zeros((len(rows), bucket), bool)
        for out, row in enumerate(rows[rows < len(items)]):
            idx, lo, hi = items[row]
            feats[out, :hi - lo] = self.source[idx]["feats"][lo:hi]
            mask[out, :hi - lo] = True
        return {"feats": feats, "mask": mask, "label": label, "index": index, "valid": valid}
