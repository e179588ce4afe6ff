"""Readers that turn a corpus into `SourceItem`s (features per item: features.py).

Every reader has the signature of hrf_jax/data/registry.py. Readers never raise for a bad
row or file: they count it in a `SkipLog` under a reason. They raise `LayoutError` at once
when the folder does not look like the corpus at all.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import pathlib
import re
from collections.abc import Callable

import numpy as np
import soundfile as sf

from hrf_jax.data import synthetic
from hrf_jax.data.registry import RAVDESS_CLASSES

M3ED_SPLIT_SERIES = (38, 7, 11)  # train / validation / test TV series (Zhao et al., ACL 2022)


class LayoutError(ValueError):
    """The given folder or manifest does not look like the corpus."""


@dataclasses.dataclass(frozen=True)
class SourceItem:
    """One candidate example; `start`/`end` (seconds) cut a segment out of `path`.

    Its features come from `features` (a (T, F) .npy), else log-Mel of `generate()` (a
    16 kHz waveform made on demand), else log-Mel of the audio file `path`.
    """

    id: str
    label: str
    speaker: str
    group: str
    split: str | None = None
    path: pathlib.Path | None = None
    start: float | None = None
    end: float | None = None
    features: pathlib.Path | None = None
    generate: Callable[[], np.ndarray] | None = None


class SkipLog:
    """Counts skipped source items by reason and keeps the first few paths of each."""

    def __init__(self, keep: int = 5):
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)
        self._keep = keep

    def add(self, reason: str, where: object) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < self._keep:
            self.examples[reason].append(str(where))

    def total(self) -> int:
        return sum(self.counts.values())


# ---------------------------------------------------------------- synthetic

def read_synthetic(source: None, skips: SkipLog, classes: tuple[str, ...],
                   **config) -> list[SourceItem]:
    """The embedded corpus: one generated item per utterance, split by speaker.

    `config` holds the `SyntheticConfig` fields; nothing is read, so nothing is skipped.
    """
    cfg = synthetic.SyntheticConfig(**config)
    items = []
    for index in range(cfg.num_utterances):
        label, speaker = synthetic.utterance_plan(cfg, index)
        name = f"spk{speaker:02d}"
        items.append(SourceItem(
            f"syn{index:06d}", classes[label], name, name,
            synthetic.speaker_split(speaker, cfg.num_speakers),
            generate=functools.partial(_synthetic_wave, cfg, index)))
    return items


def read_synthetic_headroom(source: None, skips: SkipLog, classes: tuple[str, ...],
                            **config) -> list[SourceItem]:
    """The synthetic corpus's `headroom` preset (the HRF study's test bed)."""
    return read_synthetic(source, skips, classes, preset="headroom", **config)


def _synthetic_wave(cfg: synthetic.SyntheticConfig, index: int) -> np.ndarray:
    # Module level so that the items pickle into extraction worker processes.
    return synthetic.synthesize(cfg, index)[0]


# ---------------------------------------------------------------- IEMOCAP

_IEMOCAP_ROW = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)\s+\[.*\]\s*$")


def iemocap_speaker(turn: str) -> str:
    """'Ses01F_impro01_F000' -> 'Ses01F' (session + gender of the speaking actor)."""
    parts = turn.split("_")
    if len(parts) < 3 or not parts[0].startswith("Ses") or parts[-1][:1] not in "FM":
        raise ValueError(f"not an IEMOCAP turn name: {turn}")
    return parts[0][:5] + parts[-1][0]


def read_iemocap(root: pathlib.Path, skips: SkipLog, classes: tuple[str, ...],
                 merge_exc: bool = True) -> list[SourceItem]:
    """Items from `IEMOCAP_full_release/SessionN/dialog/EmoEvaluation/*.txt` (top level only).

    `merge_exc`: excited counts as happy, the usual four-class IEMOCAP protocol.
    """
    merge = {"exc": "hap"} if merge_exc else {}
    sessions = sorted(p for p in root.glob("Session[1-5]") if (p / "dialog/EmoEvaluation").is_dir())
    if not sessions:
        raise LayoutError(
            f"{root} does not look like IEMOCAP_full_release: expected Session1..Session5/"
            "dialog/EmoEvaluation/*.txt label files and Session*/sentences/wav/<dialog>/<turn>.wav")
    items = []
    for session in sessions:
        for txt in sorted((session / "dialog/EmoEvaluation").glob("*.txt")):
            for line_no, line in enumerate(txt.read_text(errors="replace").splitlines(), 1):
                if not line.startswith("["):
                    continue  # headers, annotator lines (C-E1:, A-E1:) and blank lines
                match = _IEMOCAP_ROW.match(line.strip())
                try:
                    if not match:
                        raise ValueError(line)
                    turn, raw = match.group(3), match.group(4)
                    speaker = iemocap_speaker(turn)
                except ValueError:
                    skips.add("bad_label_row", f"{txt}:{line_no}")
                    continue
                label = merge.get(raw, raw)
                if label not in classes:
                    skips.add("label_not_in_classes", f"{txt}:{line_no} ({raw})")
                    continue
                dialog = turn.rsplit("_", 1)[0]
                wav = session / "sentences/wav" / dialog / f"{turn}.wav"
                items.append(SourceItem(turn, label, speaker, session.name, None, wav))
    return items


# ---------------------------------------------------------------- DAIC-WOZ

def _read_split_csv(path: pathlib.Path, split: str, skips: SkipLog, classes: tuple[str, ...]
                    ) -> dict[str, tuple[str, str]]:
    out = {}
    with open(path, newline="") as fh:
        for row_no, row in enumerate(csv.DictReader(fh), 2):
            try:
                pid = str(int(float(row["Participant_ID"])))
                # The AVEC2017 test file names the column PHQ_Binary.
                binary = int(float(row.get("PHQ8_Binary") or row["PHQ_Binary"]))
                out[pid] = (classes[binary], split)
            except (KeyError, ValueError, TypeError, IndexError):
                skips.add("bad_split_row", f"{path}:{row_no}")
    return out


def read_daic_woz(root: pathlib.Path, skips: SkipLog, classes: tuple[str, ...],
                  balance: int | None = None) -> list[SourceItem]:
    """One item per Participant turn of `NNN_P/NNN_TRANSCRIPT.csv`; Ellie's rows are skipped.

    `classes` name PHQ8_Binary 0 and 1. `balance=N` keeps only the N longest turns per
    participant (counted as skipped otherwise).
    """
    train_csv = root / "train_split_Depression_AVEC2017.csv"
    dev_csv = root / "dev_split_Depression_AVEC2017.csv"
    if not train_csv.is_file() or not dev_csv.is_file():
        raise LayoutError(
            f"{root} does not look like DAIC-WOZ: expected train_split_Depression_AVEC2017.csv, "
            "dev_split_Depression_AVEC2017.csv (test split CSV optional) and NNN_P/NNN_AUDIO.wav "
            "+ NNN_P/NNN_TRANSCRIPT.csv folders")
    labels = _read_split_csv(train_csv, "train", skips, classes)
    labels.update(_read_split_csv(dev_csv, "validation", skips, classes))
    for name in ("full_test_split.csv", "test_split_Depression_AVEC2017.csv"):
        if (root / name).is_file():
            labels.update(_read_split_csv(root / name, "test", skips, classes))
            break
    items = []
    folders = {p.name[:-2]: p for p in root.glob("*_P") if p.is_dir()}
    for pid in sorted(set(folders) - set(labels), key=int):
        skips.add("participant_not_in_split", folders[pid])
    for pid in sorted(labels, key=int):
        label, split = labels[pid]
        folder = root / f"{pid}_P"
        transcript = folder / f"{pid}_TRANSCRIPT.csv"
        if not transcript.is_file():
            skips.add("missing_transcript", transcript)
            continue
        wav = folder / f"{pid}_AUDIO.wav"
        duration = _duration(wav)
        turns = []
        with open(transcript, newline="", errors="replace") as fh:
            rows = list(csv.reader(fh, delimiter="\t"))
        for row_no, row in enumerate(rows[1:], 2):
            try:
                start, stop, who = float(row[0]), float(row[1]), row[2].strip()
                if not (np.isfinite(start) and np.isfinite(stop)) or stop <= start or start < 0:
                    raise ValueError
            except (ValueError, IndexError):
                skips.add("bad_transcript_row", f"{transcript}:{row_no}")
                continue
            if who != "Participant":
                skips.add("interviewer_turn", f"{transcript}:{row_no}")
                continue
            if start >= duration:
                skips.add("segment_out_of_range", f"{transcript}:{row_no}")
                continue
            turns.append((start, stop, row_no))
        if balance:
            longest = sorted(turns, key=lambda t: t[0] - t[1])[:balance]
            for t in turns:
                if t not in longest:
                    skips.add("balancing", f"{transcript}:{t[2]}")
            turns = sorted(longest, key=lambda t: t[0])
        for start, stop, row_no in turns:
            items.append(SourceItem(f"{pid}_{row_no:04d}", label, pid, pid, split, wav, start,
                                    stop))
    return items


def _duration(path: pathlib.Path) -> float:
    """Seconds of audio from the header only; inf when unknown (errors surface per turn)."""
    try:
        info = sf.info(str(path))
        return info.frames / info.samplerate
    except Exception:  # missing or undecodable: counted when the turn is extracted
        return float("inf")


# ---------------------------------------------------------------- manifests

def _manifest_rows(manifest: pathlib.Path, required: tuple[str, ...]) -> list[dict]:
    if not manifest.is_file():
        raise LayoutError(f"manifest not found: {manifest}")
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise LayoutError(
                f"{manifest} lacks column(s) {missing}: expected a header with "
                f"{','.join(required)} (optional: split, group, id, features)")
        return list(reader)


def _resolve(base: pathlib.Path, value: str) -> pathlib.Path:
    path = pathlib.Path(value)
    return path if path.is_absolute() else base / path


def read_manifest(manifest: pathlib.Path, skips: SkipLog, classes: tuple[str, ...] | None = None,
                  required: tuple[str, ...] = ("path", "label", "speaker"),
                  group_column: str = "group") -> list[SourceItem]:
    """Items from a CSV with `path,label,speaker[,split,group,id,features]` (paths relative to it).

    With `classes=None` the class set is every label seen (sorted).
    """
    rows = _manifest_rows(manifest, required)
    base = manifest.parent
    items, seen = [], set()
    for row_no, row in enumerate(rows, 2):
        where = f"{manifest}:{row_no}"
        label = (row.get("label") or "").strip()
        path = (row.get("path") or "").strip()
        speaker = (row.get("speaker") or "").strip()
        if not path and not (row.get("features") or "").strip() or not label or not speaker:
            skips.add("bad_manifest_row", where)
            continue
        if classes is not None and label not in classes:
            skips.add("label_not_in_classes", f"{where} ({label})")
            continue
        uid = (row.get("id") or "").strip() or pathlib.Path(path).stem
        if uid in seen:
            skips.add("duplicate_id", f"{where} ({uid})")
            continue
        seen.add(uid)
        split = (row.get("split") or "").strip() or None
        if split is not None and split not in ("train", "validation", "test"):
            skips.add("bad_split_name", f"{where} ({split})")
            continue
        feats = (row.get("features") or "").strip()
        items.append(SourceItem(
            uid, label, speaker, (row.get(group_column) or "").strip() or speaker, split,
            _resolve(base, path) if path else None,
            features=_resolve(base, feats) if feats else None))
    return items


def read_m3ed(manifest: pathlib.Path, skips: SkipLog, classes: tuple[str, ...],
              split_seed: int = 0) -> list[SourceItem]:
    """M3ED from a manifest `path,label,speaker,series[,split,id,features]`.

    Without a `split` column the series are split 38/7/11 deterministically by `split_seed`;
    give the official split in `split` to reproduce published numbers.
    """
    items = read_manifest(manifest, skips, classes, ("path", "label", "speaker", "series"),
                          group_column="series")
    if items and any(it.split is None for it in items):
        series = sorted({it.group for it in items})
        order = np.random.default_rng(split_seed).permutation(len(series))
        n_train, n_val, _ = _scaled_counts(len(series), M3ED_SPLIT_SERIES)
        which = {}
        for rank, idx in enumerate(order):
            which[series[idx]] = ("train" if rank < n_train else
                                  "validation" if rank < n_train + n_val else "test")
        items = [dataclasses.replace(it, split=it.split or which[it.group]) for it in items]
    return items


def _scaled_counts(n: int, ratio: tuple[int, int, int]) -> tuple[int, int, int]:
    total = sum(ratio)
    val = max(1, round(n * ratio[1] / total)) if n >= 3 else 0
    test = max(1, round(n * ratio[2] / total)) if n >= 3 else 0
    return n - val - test, val, test


# ---------------------------------------------------------------- filename-coded corpora

def _ravdess(stem: str) -> tuple[str, str]:
    # modality-channel-emotion-intensity-statement-repetition-actor, e.g. 03-01-05-01-02-01-12
    parts = stem.split("-")
    if len(parts) != 7 or not all(p.isdigit() for p in parts) or parts[0] != "03":
        raise ValueError(stem)  # modality 03 = audio only
    # Emotion codes 01..08 name RAVDESS's eight emotions in the registry's order.
    return RAVDESS_CLASSES[int(parts[2]) - 1], f"Actor_{parts[6]}"


def _cremad(stem: str) -> tuple[str, str]:
    # actor_sentence_emotion_level, e.g. 1001_DFA_ANG_XX
    parts = stem.split("_")
    if len(parts) != 4 or not parts[0].isdigit():
        raise ValueError(stem)
    return parts[2], parts[0]


def read_ravdess(root: pathlib.Path, skips: SkipLog, classes: tuple[str, ...]
                 ) -> list[SourceItem]:
    """RAVDESS speech `Actor_NN/03-01-EE-II-SS-RR-NN.wav`: emotion and actor from the name."""
    return _read_filename_coded(root, skips, classes, _ravdess)


def read_crema_d(root: pathlib.Path, skips: SkipLog, classes: tuple[str, ...]
                 ) -> list[SourceItem]:
    """CREMA-D `AudioWAV/AAAA_SSS_EEE_LL.wav`: actor and emotion from the name."""
    return _read_filename_coded(root, skips, classes, _cremad)


def _read_filename_coded(root: pathlib.Path, skips: SkipLog, classes: tuple[str, ...],
                         parse: Callable[[str], tuple[str, str]]) -> list[SourceItem]:
    """Label and actor of each .wav under `root` from its name; group = speaker = actor."""
    wavs = sorted(root.rglob("*.wav"))
    if not wavs:
        raise LayoutError(f"{root} holds no .wav files: expected RAVDESS Actor_NN/"
                          "03-01-05-01-02-01-12.wav or CREMA-D AudioWAV/1001_DFA_ANG_XX.wav")
    items = []
    for wav in wavs:
        try:
            label, actor = parse(wav.stem)
        except (ValueError, IndexError):
            skips.add("bad_filename", wav)
            continue
        if label not in classes:
            skips.add("label_not_in_classes", wav)
            continue
        items.append(SourceItem(wav.stem, label, actor, actor, None, wav))
    return items
