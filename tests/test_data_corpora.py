"""Corpus builders on fixture trees in each corpus's real layout, including every bad input."""

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import soundfile as sf

from hrf_jax.data import load_dataset, prepare
from hrf_jax.data.corpora import LayoutError
from hrf_jax.data.preparation import dataset_dir
from hrf_jax.data.registry import CORPORA

SR = 16_000


class Prepared(NamedTuple):
    """A corpus prepared once per module: its data root, folder and `load_dataset` options."""

    data_dir: Path
    out: Path
    options: dict


def _tone(path, seconds=0.3, sr=SR, channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.2 * np.sin(2 * np.pi * 220 * t)
    sf.write(path, np.stack([wave] * channels, 1) if channels > 1 else wave, sr)


def _truncated(path):
    _tone(path)
    path.write_bytes(path.read_bytes()[:30])  # header cut mid-way


def _report(path):
    return json.loads((path / "prepare_report.json").read_text())


# ------------------------------------------------------------------ IEMOCAP

_TURNS = [("F000", "neu"), ("F001", "exc"), ("M000", "ang"), ("M001", "sad"), ("M002", "fru")]
# Session1 extras: (turn, label, how the wav is written)
_BAD = [("F002", "hap", None), ("F003", "neu", lambda p: p.write_bytes(b"RIFF nonsense")),
        ("M003", "sad", _truncated),
        ("M004", "ang", lambda p: sf.write(p, np.full(800, np.nan), SR, subtype="FLOAT")),
        ("F004", "neu", lambda p: sf.write(p, np.zeros(0), SR)),
        ("M005", "sad", lambda p: _tone(p, sr=44_100, channels=2))]


@pytest.fixture(scope="module")
def prepared_iemocap(tmp_path_factory):
    root = tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release"
    for s in range(1, 6):
        session = root / f"Session{s}"
        dialog = f"Ses0{s}F_impro01"
        rows = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        turns = _TURNS + (_BAD if s == 1 else [])
        for k, (turn, label, *how) in enumerate(turns):
            name = f"{dialog}_{turn}"
            rows += [f"[{k}.0000 - {k}.5000]\t{name}\t{label}\t[2.5000, 2.5000, 2.5000]",
                     "C-E1:\tNeutral;\t()"]
            wav = session / "sentences/wav" / dialog / f"{name}.wav"
            writer = how[0] if how else _tone
            if writer is not None:
                wav.parent.mkdir(parents=True, exist_ok=True)
                writer(wav)
        if s == 1:
            rows.append("[not a - row")
        labels = session / "dialog/EmoEvaluation"
        labels.mkdir(parents=True)
        (labels / f"{dialog}.txt").write_text("\n".join(rows) + "\n")
        # Per-annotator files in sub-folders are not label files and must be ignored.
        (labels / "Categorical").mkdir()
        (labels / "Categorical" / f"{dialog}_e1_cat.txt").write_text(
            f"[0.0 - 1.0]\t{dialog}_F000\tang\t[1, 1, 1]\n")
    out = prepare("iemocap", data_dir=root.parent / "data", manual_dir=root, workers=1,
                  verbose=False)
    return Prepared(root.parent / "data", out, {})


def test_iemocap_counts_per_class_group_and_skip_reason(prepared_iemocap):
    report = _report(prepared_iemocap.out)
    assert set(report) == {"dataset", "num_examples", "per_class", "per_group", "skipped"}
    assert report["num_examples"] == 21
    assert report["per_class"] == {"ang": 5, "hap": 5, "neu": 5, "sad": 6}
    assert report["per_group"] == {"Session1": 5, "Session2": 4, "Session3": 4, "Session4": 4,
                                   "Session5": 4}
    assert report["skipped"] == {"bad_label_row": 1, "empty_audio": 1,
                                 "label_not_in_classes": 5, "missing_audio": 1,
                                 "nonfinite_audio": 1, "unreadable_audio": 2}


def test_iemocap_kept_plus_skipped_is_every_label_row(prepared_iemocap):
    report = _report(prepared_iemocap.out)
    rows = 5 * len(_TURNS) + len(_BAD) + 1
    assert report["num_examples"] + sum(report["skipped"].values()) == rows


def test_iemocap_loso_folds_hold_out_one_session_and_validate_elsewhere(prepared_iemocap):
    seen_test = []
    for fold in range(5):
        ds = load_dataset("iemocap", prepared_iemocap.data_dir, fold=fold, protocol="loso")
        test_groups = set(ds.test.groups)
        assert test_groups == {f"Session{fold + 1}"}
        assert not test_groups & set(ds.validation.groups)
        assert not test_groups & set(ds.train.groups)
        assert not set(ds.validation.speakers) & set(ds.train.speakers)
        assert len(ds.train) + len(ds.validation) + len(ds.test) == 21
        seen_test += list(ds.test.ids)
    assert sorted(seen_test) == sorted(set(seen_test)) and len(seen_test) == 21


def test_iemocap_speaker_folds_are_disjoint_and_cover_ten_speakers(prepared_iemocap):
    tested = []
    for fold in range(10):
        ds = load_dataset("iemocap", prepared_iemocap.data_dir, fold=fold, protocol="speaker")
        (speaker,) = set(ds.test.speakers)
        tested.append(speaker)
        assert speaker not in set(ds.validation.speakers) | set(ds.train.speakers)
        assert set(ds.validation.groups) == set(ds.test.groups)  # the session's other actor
    assert tested == sorted(f"Ses0{s}{g}" for s in range(1, 6) for g in "FM")
    ds = load_dataset("iemocap", prepared_iemocap.data_dir, fold=0, protocol="speaker")
    assert (len(ds.test), len(ds.validation)) == (2, 3)  # Ses01F kept 2, Ses01M kept 3


def test_iemocap_corpus_stats_come_from_train_split_only(prepared_iemocap):
    raw = load_dataset("iemocap", prepared_iemocap.data_dir, fold=0, normalize=None)
    ds = load_dataset("iemocap", prepared_iemocap.data_dir, fold=0)
    train = np.concatenate([raw.train[i]["feats"] for i in range(len(raw.train))])
    np.testing.assert_allclose(ds.stats.mean, train.mean(0), atol=1e-4)
    np.testing.assert_allclose(ds.stats.std, np.maximum(train.std(0), 1e-5), atol=1e-4)
    np.testing.assert_allclose(ds.test[0]["feats"], ds.stats.apply(raw.test[0]["feats"]))


def test_not_iemocap_fails_at_once_with_expected_layout(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(LayoutError, match="Session1..Session5"):
        prepare("iemocap", data_dir=tmp_path / "d", manual_dir=tmp_path, verbose=False)


# ------------------------------------------------------------------ DAIC-WOZ

def _daic_tree(root):
    root.mkdir(parents=True)
    (root / "train_split_Depression_AVEC2017.csv").write_text(
        "Participant_ID,PHQ8_Binary,PHQ8_Score,Gender\n300,1,12,1\n301,0,2,0\n")
    (root / "dev_split_Depression_AVEC2017.csv").write_text(
        "Participant_ID,PHQ8_Binary,PHQ8_Score,Gender\n302,0,3,1\n")
    (root / "full_test_split.csv").write_text("Participant_ID,PHQ_Binary,PHQ_Score,Gender\n"
                                              "303,1,15,0\n")
    base = [("0.0", "0.5", "Ellie", "hi"), ("0.5", "1.0", "Participant", "hello"),
            ("1.0", "1.3", "Ellie", "how are you"), ("1.3", "1.9", "Participant", "fine")]
    extra = {"300": [("abc", "1", "Participant", "x"), ("10.0", "11.0", "Participant", "late")]}
    for pid in ("300", "301", "302", "303", "304"):
        folder = root / f"{pid}_P"
        folder.mkdir()
        rows = ["start_time\tstop_time\tspeaker\tvalue"]
        rows += ["\t".join(r) for r in base + extra.get(pid, [])]
        (folder / f"{pid}_TRANSCRIPT.csv").write_text("\n".join(rows) + "\n")
        if pid != "301":
            _tone(folder / f"{pid}_AUDIO.wav", seconds=2.5)


@pytest.fixture(scope="module")
def daic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("daic") / "DAIC-WOZ"
    _daic_tree(root)
    return root


@pytest.fixture(scope="module")
def prepared_daic_woz(daic_root):
    out = prepare("daic_woz", data_dir=daic_root.parent / "d", manual_dir=daic_root, workers=1,
                  verbose=False)
    return Prepared(daic_root.parent / "d", out, {})


def test_daic_woz_turns_labels_splits_and_skips(prepared_daic_woz):
    report = _report(prepared_daic_woz.out)
    assert report["num_examples"] == 6
    assert report["per_class"] == {"not_depressed": 2, "depressed": 4}
    assert report["per_group"] == {"300": 2, "302": 2, "303": 2}
    assert {s: v["num_examples"] for s, v in report["per_split"].items()} == {
        "train": 2, "validation": 2, "test": 2}
    assert report["skipped"] == {"bad_transcript_row": 1, "interviewer_turn": 8,
                                 "missing_audio": 2, "participant_not_in_split": 1,
                                 "segment_out_of_range": 1}
    assert report["num_examples"] + sum(report["skipped"].values()) == 4 * 5 + 2 - 4 + 1
    ds = load_dataset("daic_woz", prepared_daic_woz.data_dir, normalize=None)
    lengths = sorted(ds.train.lengths.tolist())
    assert lengths == [1 + (8000 - 512) // 160, 1 + (9600 - 512) // 160]  # 0.5 s and 0.6 s turns


def test_daic_woz_balancing_keeps_longest_turns(daic_root, tmp_path):
    out = prepare("daic_woz", data_dir=tmp_path / "d", manual_dir=daic_root, balance=1,
                  workers=1, verbose=False)
    report = _report(out)
    assert report["num_examples"] == 3 and report["skipped"]["balancing"] == 4
    ds = load_dataset("daic_woz", tmp_path / "d", balance=1, normalize=None)
    assert ds.train.lengths.tolist() == [1 + (9600 - 512) // 160]


def test_worker_processes_store_the_same_examples_and_skips(prepared_daic_woz, daic_root,
                                                            tmp_path):
    # Participant 300's second turn and 301's two turns (one file each) go to the workers.
    out = prepare("daic_woz", data_dir=tmp_path, manual_dir=daic_root, workers=2, verbose=False)
    assert _report(out) == _report(prepared_daic_woz.out)
    one, two = (load_dataset("daic_woz", d, normalize=None)
                for d in (prepared_daic_woz.data_dir, tmp_path))
    for split in ("train", "validation", "test"):
        a, b = getattr(one, split), getattr(two, split)
        assert list(a.ids) == list(b.ids)
        for i in range(len(a)):
            np.testing.assert_array_equal(a[i]["feats"], b[i]["feats"])


def test_not_daic_fails_at_once(tmp_path):
    with pytest.raises(LayoutError, match="train_split_Depression_AVEC2017.csv"):
        prepare("daic_woz", data_dir=tmp_path / "d", manual_dir=tmp_path, verbose=False)


# ------------------------------------------------------------------ manifests

@pytest.fixture(scope="module")
def prepared_csv(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("csv")
    rows = ["path,label,speaker"]
    for spk in ("a", "b", "c"):
        for k, label in enumerate(("calm", "loud")):
            _tone(tmp_path / "wavs" / f"{spk}{k}.wav")
            rows.append(f"wavs/{spk}{k}.wav,{label},{spk}")
    _tone(tmp_path / "wavs" / "long.wav", seconds=25.0, sr=8_000)  # very long: kept whole
    rows += ["wavs/long.wav,calm,c", "wavs/gone.wav,calm,a", "wavs/a0.wav,,a",
             "wavs/b0.wav,weird,b"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    options = {"manifest": tmp_path / "m.csv", "classes": ["calm", "loud"]}
    out = prepare("csv", data_dir=tmp_path / "d", workers=1, verbose=False, **options)
    return Prepared(tmp_path / "d", out, options)


def test_csv_manifest_relative_paths_skips_and_speaker_folds(prepared_csv):
    report = _report(prepared_csv.out)
    assert report["num_examples"] == 7 and "per_split" not in report
    assert report["skipped"] == {"bad_manifest_row": 1, "label_not_in_classes": 1,
                                 "missing_audio": 1}
    ds = load_dataset("csv", prepared_csv.data_dir, fold=1)
    assert set(ds.test.speakers) == {"b"} and set(ds.validation.speakers) == {"c"}
    assert ds.class_names == ["calm", "loud"]
    assert ds.validation.lengths.max() == 1 + (25 * SR - 512) // 160


# corpus -> (files, kept per class)
_FILENAME_CODED = {
    "ravdess": (["Actor_01/03-01-05-01-02-01-01.wav", "Actor_01/03-01-01-01-01-01-01.wav",
                 "Actor_02/03-01-04-02-01-02-02.wav", "Actor_02/03-01-09-01-01-01-02.wav",
                 "Actor_02/readme.wav"],
                {"angry": 1, "neutral": 1, "sad": 1}),
    "crema_d": (["AudioWAV/1001_DFA_ANG_XX.wav", "AudioWAV/1001_IEO_HAP_HI.wav",
                 "AudioWAV/1002_DFA_SAD_XX.wav", "AudioWAV/1002_DFA_XYZ_XX.wav",
                 "AudioWAV/notes.wav"],
                {"ANG": 1, "HAP": 1, "SAD": 1}),
}


def _prepare_filename_coded(tmp_path_factory, corpus):
    tmp_path = tmp_path_factory.mktemp(corpus)
    for name in _FILENAME_CODED[corpus][0]:
        _tone(tmp_path / "src" / name)
    out = prepare(corpus, data_dir=tmp_path / "d", manual_dir=tmp_path / "src", workers=1,
                  verbose=False)
    return Prepared(tmp_path / "d", out, {})


@pytest.fixture(scope="module")
def prepared_ravdess(tmp_path_factory):
    return _prepare_filename_coded(tmp_path_factory, "ravdess")


@pytest.fixture(scope="module")
def prepared_crema_d(tmp_path_factory):
    return _prepare_filename_coded(tmp_path_factory, "crema_d")


@pytest.mark.parametrize("corpus", sorted(_FILENAME_CODED))
def test_filename_coded_corpora(corpus, request):
    files, expected = _FILENAME_CODED[corpus]
    report = _report(request.getfixturevalue(f"prepared_{corpus}").out)
    assert {k: v for k, v in report["per_class"].items() if v} == expected
    assert report["num_examples"] + sum(report["skipped"].values()) == len(files)
    assert len(report["per_group"]) == 2  # one group per actor


def test_precomputed_features_replace_logmel(tmp_path):
    feats = tmp_path / "feats"
    feats.mkdir()
    rows = ["path,label,speaker,split"]
    for k in range(4):
        np.save(feats / f"u{k}.npy", np.full((20 + k, 24), k, np.float32))
        rows.append(f"u{k}.wav,x,s{k},{['train', 'train', 'validation', 'test'][k]}")
    np.save(feats / "bad.npy", np.full((5, 24), np.nan, np.float32))
    np.save(feats / "flat.npy", np.zeros(7, np.float32))
    (feats / "junk.npy").write_bytes(b"junk")
    rows += ["bad.wav,x,s0,train", "flat.wav,x,s0,train", "junk.wav,x,s0,train",
             "nofile.wav,x,s0,train"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    out = prepare("csv", data_dir=tmp_path / "d", manifest=tmp_path / "m.csv",
                  features_dir=feats, frame_rate=50.0, workers=1, verbose=False)
    report = _report(out)
    assert report["skipped"] == {"bad_feature_shape": 1, "missing_features": 1,
                                 "nonfinite_features": 1, "unreadable_features": 1}
    ds = load_dataset("csv", tmp_path / "d", normalize=None)
    assert ds.feature_dim == 24 and ds.frame_rate == 50.0
    assert ds.test[0]["feats"].shape == (23, 24) and np.all(ds.test[0]["feats"] == 3)


@pytest.fixture(scope="module")
def prepared_m3ed(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("m3ed")
    rows = ["path,label,speaker,series"]
    for s in range(6):
        for k, label in enumerate(("happy", "anger", "neutral")):
            _tone(tmp_path / f"s{s}_{k}.wav")
            rows.append(f"s{s}_{k}.wav,{label},spk{s}_{k % 2},series{s}")
    rows.append("s0_0.wav,contempt,spk0_0,series0")
    (tmp_path / "m3ed.csv").write_text("\n".join(rows) + "\n")
    options = {"manifest": tmp_path / "m3ed.csv"}
    out = prepare("m3ed", data_dir=tmp_path / "d", workers=1, verbose=False, **options)
    return Prepared(tmp_path / "d", out, options)


def test_m3ed_series_never_cross_splits(prepared_m3ed):
    report = _report(prepared_m3ed.out)
    assert report["skipped"] == {"label_not_in_classes": 1}
    assert {s: v["num_examples"] for s, v in report["per_split"].items()} == {
        "train": 12, "validation": 3, "test": 3}
    ds = load_dataset("m3ed", prepared_m3ed.data_dir, **prepared_m3ed.options)
    groups = [set(s.groups) for s in (ds.train, ds.validation, ds.test)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert len(ds.class_names) == 7


@pytest.fixture(scope="module")
def prepared_synthetic(tiny_data_dir, tiny_corpus):
    from hrf_jax.data import ensure_prepared

    return Prepared(tiny_data_dir, ensure_prepared("synthetic", tiny_data_dir, **tiny_corpus),
                    tiny_corpus)


@pytest.fixture(scope="module")
def prepared_synthetic_headroom(tmp_path_factory):
    from hrf_jax.data import ensure_prepared

    data_dir = tmp_path_factory.mktemp("headroom")
    options = {"num_utterances": 36, "num_speakers": 6}  # six speakers x six classes
    return Prepared(data_dir, ensure_prepared("synthetic_headroom", data_dir, **options),
                    options)


@pytest.mark.parametrize("name", list(CORPORA))
def test_every_registered_corpus_prepares_and_loads_through_its_entry(name, request):
    try:
        prepared = request.getfixturevalue(f"prepared_{name}")
    except pytest.FixtureLookupError:
        pytest.fail(f"corpus {name!r} is registered but has no `prepared_{name}` fixture "
                    "(a tiny tree in its real layout) in this module")
    corpus = CORPORA[name]
    config = prepared.out.parent.name
    assert prepared.out == dataset_dir(name, prepared.data_dir, config)
    assert prepared.out.parent.parent.name == f"hrf_{name}"
    info = json.loads((prepared.out / "hrf_options.json").read_text())
    assert info["corpus"] == name
    # normalize=None: two-actor trees leave fold 0 no training speaker to take statistics from
    ds = load_dataset(name, prepared.data_dir, normalize=None, **prepared.options)
    assert ds.path == prepared.out
    classes = prepared.options.get("classes") or corpus.classes  # csv: the manifest's
    if classes is not None:
        assert ds.class_names == list(classes)
    kept = _report(prepared.out)["num_examples"]
    assert len(ds.train) + len(ds.validation) + len(ds.test) == kept
