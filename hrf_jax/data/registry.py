"""The corpora `hrf-jax prepare` knows, one `Corpus` entry each (standard library only).

Adding a corpus is one entry in `CORPORA` plus its reader, a function
`reader(source, skips, classes, **options) -> list[SourceItem]` (see hrf_jax/data/corpora.py):
`source` is the `--manual-dir` folder, the `--manifest` file or None (see `needs`), `skips` a
`SkipLog`, `classes` the class names to keep (None: every label found), `options` the entry's
options other than `classes`, defaults filled in. The TFDS builder (prepared folder
`hrf_<name>`), the `prepare` CLI choices and the loaders all follow from the entry.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # annotations only: corpora imports soundfile and JAX
    from hrf_jax.data.corpora import SkipLog, SourceItem

SYNTHETIC_CLASSES = ("neutral", "happy", "angry", "sad")
HEADROOM_CLASSES = (*SYNTHETIC_CLASSES, "fear", "boredom")
IEMOCAP_CLASSES = ("ang", "hap", "neu", "sad")
DAIC_CLASSES = ("not_depressed", "depressed")  # PHQ8_Binary 0 / 1
M3ED_CLASSES = ("happy", "surprise", "sad", "disgust", "anger", "fear", "neutral")
RAVDESS_CLASSES = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
CREMAD_CLASSES = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
# The defaults of hrf_jax.data.synthetic.SyntheticConfig, which reads them from here.
SYNTHETIC_OPTIONS = {"num_utterances": 2400, "num_speakers": 24, "seed": 0, "difficulty": 1.0,
                     "min_seconds": 1.0, "max_seconds": 6.0, "lexicon": 0, "flat": ""}
# The HRF study's test bed (synthetic preset "headroom"): more speakers and utterances, 1.2-2.8 s
# long so that a 1.6 s training crop holds most of the emotional stretch and its context.
HEADROOM_OPTIONS = {**SYNTHETIC_OPTIONS, "num_utterances": 4800, "num_speakers": 48,
                    "min_seconds": 1.2, "max_seconds": 2.8}


@dataclasses.dataclass(frozen=True)
class Corpus:
    """One corpus: where it comes from, its classes and data-changing options, its reader."""

    name: str  # prepared folder `hrf_<name>`, `hrf-jax prepare` choice, `dataset.name`
    summary: str  # one line: the builder's description
    reader: str  # "module:function", imported when the corpus is prepared
    classes: tuple[str, ...] | None  # None: every label found in the manifest, sorted
    # option -> default; a non-default value makes another prepared configuration
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    needs: Literal["manual_dir", "manifest"] | None = None
    source_help: str = ""  # what --manual-dir / --manifest points at
    # Scored by a majority vote over each group's utterances too (DAIC-WOZ: per participant).
    group_vote: bool = False

    def read(self, source: pathlib.Path | None, skips: SkipLog,
             classes: tuple[str, ...] | None, **options: Any) -> list[SourceItem]:
        """Run the reader: `SourceItem`s, with rejected rows and files counted in `skips`."""
        module, _, function = self.reader.partition(":")
        reader = getattr(importlib.import_module(module), function)
        return reader(source, skips, classes, **options)


_READERS = "hrf_jax.data.corpora"
# cross-validation protocols: leave one group (session) out / leave one speaker out
PROTOCOLS = ("loso", "speaker")

CORPORA: dict[str, Corpus] = {c.name: c for c in (
    Corpus("synthetic", "the embedded synthetic corpus (hrf_jax/data/synthetic.py)",
           reader=f"{_READERS}:read_synthetic", classes=SYNTHETIC_CLASSES,
           options=SYNTHETIC_OPTIONS),
    Corpus("synthetic_headroom", "the synthetic corpus's harder preset, the HRF study's test "
           "bed (hrf_jax/data/synthetic.py)", reader=f"{_READERS}:read_synthetic_headroom",
           classes=HEADROOM_CLASSES, options=HEADROOM_OPTIONS),
    Corpus("iemocap", "IEMOCAP scripted and improvised turns",
           reader=f"{_READERS}:read_iemocap", classes=IEMOCAP_CLASSES,
           options={"classes": IEMOCAP_CLASSES, "merge_exc": True},
           needs="manual_dir", source_help="the IEMOCAP_full_release folder"),
    Corpus("daic_woz", "DAIC-WOZ participant turns, PHQ-8 binary label",
           reader=f"{_READERS}:read_daic_woz", classes=DAIC_CLASSES, options={"balance": None},
           needs="manual_dir",
           source_help="the DAIC-WOZ folder (NNN_P/ folders and the AVEC 2017 split CSVs)",
           group_vote=True),
    Corpus("m3ed", "M3ED from a manifest",
           reader=f"{_READERS}:read_m3ed", classes=M3ED_CLASSES, options={"split_seed": 0},
           needs="manifest", source_help="a CSV with path,label,speaker,series"),
    Corpus("csv", "any corpus from a path,label,speaker manifest",
           reader=f"{_READERS}:read_manifest", classes=None, options={"classes": None},
           needs="manifest", source_help="a CSV with path,label,speaker"),
    Corpus("ravdess", "RAVDESS speech, labels from file names",
           reader=f"{_READERS}:read_ravdess", classes=RAVDESS_CLASSES,
           options={"classes": RAVDESS_CLASSES},
           needs="manual_dir", source_help="the RAVDESS root (Actor_NN/ folders)"),
    Corpus("crema_d", "CREMA-D, labels from file names",
           reader=f"{_READERS}:read_crema_d", classes=CREMAD_CLASSES,
           options={"classes": CREMAD_CLASSES},
           needs="manual_dir", source_help="the CREMA-D root (AudioWAV/)"),
)}


def get_corpus(name: str) -> Corpus:
    """The registry entry of `name`; ValueError naming the choices otherwise."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    return CORPORA[name]
