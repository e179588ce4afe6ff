"""The corpus registry is the single source: readers, builders, CLI choices and loaders follow
from its entries, and it (with the `prepare` CLI) imports without TFDS, grain or JAX."""

import argparse
import dataclasses
import importlib
import inspect
import json
import subprocess
import sys

import numpy as np
import pytest

from hrf_jax.cli import build_parser, main
from hrf_jax.data import load_dataset, prepare
from hrf_jax.data.corpora import LayoutError, SourceItem
from hrf_jax.data.registry import CORPORA, Corpus
from hrf_jax.data.synthetic import SyntheticConfig


def _cli(*argv: str) -> int:
    return main(["prepare", *argv])


def test_registry_and_prepare_cli_import_without_tfds_grain_jax_or_soundfile():
    code = ("import sys, argparse, hrf_jax.data.registry, hrf_jax.cli.prepare as p\n"
            "p.add_parser(argparse.ArgumentParser().add_subparsers())\n"
            "print([m for m in ('jax', 'flax', 'tensorflow_datasets', 'grain', 'soundfile')"
            " if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_prepare_cli_offers_exactly_the_registered_corpora():
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    (name,) = [a for a in sub.choices["prepare"]._actions if a.dest == "name"]
    assert list(name.choices) == list(CORPORA)


@pytest.mark.parametrize("name", list(CORPORA))
def test_every_reader_takes_source_skips_classes_and_its_registered_options(name):
    corpus = CORPORA[name]
    module, _, function = corpus.reader.partition(":")
    reader = getattr(importlib.import_module(module), function)
    options = {k: v for k, v in corpus.options.items() if k != "classes"}
    inspect.signature(reader).bind(None, None, corpus.classes, **options)


@pytest.mark.parametrize("name", list(CORPORA))
def test_every_corpus_gets_a_builder_whose_folder_is_hrf_name(name):
    from hrf_jax.data.builders import CorpusBuilder, builder_class

    assert issubclass(builder_class(name), CorpusBuilder)
    assert builder_class(name).name == f"hrf_{name}"


def test_synthetic_options_are_the_synthesizer_config_fields():
    defaults = {f.name: f.default for f in dataclasses.fields(SyntheticConfig)}
    # the preset is the corpus (synthetic / synthetic_headroom), not one of its options
    assert defaults.pop("preset") == "basic"
    assert defaults == dict(CORPORA["synthetic"].options)
    assert set(CORPORA["synthetic_headroom"].options) == set(defaults)


def test_only_daic_woz_is_scored_by_a_vote_per_group():
    assert [name for name, corpus in CORPORA.items() if corpus.group_vote] == ["daic_woz"]


@pytest.mark.parametrize("name", [n for n, c in CORPORA.items() if c.needs])
def test_a_corpus_without_its_source_fails_naming_the_flag(name, tmp_path):
    flag = "--" + CORPORA[name].needs.replace("_", "-")
    with pytest.raises(LayoutError, match=flag):
        prepare(name, data_dir=tmp_path, verbose=False)
    assert not (tmp_path / f"hrf_{name}").exists()


def test_unknown_corpus_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="choose one of synthetic, synthetic_headroom, iemocap"):
        prepare("timit", data_dir=tmp_path)
    with pytest.raises(ValueError, match="choose one of synthetic, synthetic_headroom, iemocap"):
        load_dataset("timit", tmp_path)


def test_prepare_cli_exit_codes_and_messages(tmp_path, capsys):
    assert _cli("iemocap", "--manual-dir", str(tmp_path), "--data-dir", str(tmp_path / "d")) == 2
    assert "hrf-jax prepare: " in (err := capsys.readouterr().err)
    assert "IEMOCAP_full_release" in err
    assert _cli("iemocap", "--data-dir", str(tmp_path / "d")) == 2
    assert "needs --manual-dir" in capsys.readouterr().err
    assert _cli("iemocap", "--manual-dir", str(tmp_path), "--num-utterances", "3") == 2
    assert "unknown option(s) ['num_utterances'] for iemocap" in capsys.readouterr().err
    assert _cli("synthetic", "--data-dir", str(tmp_path / "d"), "--num-utterances", "12",
                "--num-speakers", "3", "--workers", "1") == 0
    (out,) = (tmp_path / "d" / "hrf_synthetic").glob("*/1.0.0")
    assert json.loads((out / "prepare_report.json").read_text())["num_examples"] == 12


# ------------------------------------------------------------------ a corpus added in a test

def read_toy(root, skips, classes, min_frames=0):
    """`<speaker>_<label>_<k>.npy` (T, F) features; shorter than `min_frames` is skipped."""
    items = []
    for path in sorted(root.glob("*.npy")):
        speaker, label, _ = path.stem.split("_")
        if np.load(path).shape[0] < min_frames:
            skips.add("too_short", path)
        elif label in classes:
            items.append(SourceItem(path.stem, label, speaker, speaker, features=path))
    return items


@pytest.fixture
def toy_corpus(monkeypatch, tmp_path):
    root = tmp_path / "toy"
    root.mkdir()
    for s, speaker in enumerate(("ann", "bob", "cyd")):
        for k, label in enumerate(("hi", "lo")):
            np.save(root / f"{speaker}_{label}_{k}.npy", np.full((2 + s + k, 5), s, np.float32))
    monkeypatch.setitem(CORPORA, "toy", Corpus(
        "toy", "a test corpus", reader=f"{__name__}:read_toy", classes=("hi", "lo"),
        options={"min_frames": 0}, needs="manual_dir", source_help="a folder of .npy files"))
    return root


def test_one_registry_entry_and_its_reader_make_a_corpus(toy_corpus, tmp_path):
    assert _cli("toy", "--manual-dir", str(toy_corpus), "--data-dir", str(tmp_path / "d"),
                "--workers", "1") == 0
    ds = load_dataset("toy", tmp_path / "d", fold=0, protocol="speaker", normalize=None)
    assert ds.path.parent.parent.name == "hrf_toy"
    assert ds.class_names == ["hi", "lo"] and ds.feature_dim == 5
    assert set(ds.test.speakers) == {"ann"} and len(ds.train) + len(ds.validation) == 4
    out = prepare("toy", data_dir=tmp_path / "d", manual_dir=toy_corpus, min_frames=4,
                  workers=1, verbose=False)
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["num_examples"] == 3 and report["skipped"] == {"too_short": 3}
