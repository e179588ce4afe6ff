"""``hrf-jax prepare NAME``: build a corpus of the registry into the TFDS data folder."""

from __future__ import annotations

import argparse
import pathlib
import sys

from hrf_jax.data.registry import CORPORA


def _only(option: str) -> str:
    # Which corpora take a corpus-specific flag, from the registry.
    return ", ".join(name for name, corpus in CORPORA.items() if option in corpus.options) + " only"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("prepare", help="build a corpus into the TFDS data folder")
    p.add_argument("name", choices=list(CORPORA))
    p.add_argument("--data-dir", type=pathlib.Path, default=None,
                   help="output root (default: $HRF_JAX_DATA or ~/hrf_jax_data)")
    p.add_argument("--manual-dir", type=pathlib.Path, default=None, help="; ".join(
        f"{c.name}: {c.source_help}" for c in CORPORA.values() if c.needs == "manual_dir"))
    p.add_argument("--manifest", type=pathlib.Path, default=None, help="; ".join(
        f"{c.name}: {c.source_help}" for c in CORPORA.values() if c.needs == "manifest"))
    p.add_argument("--features-dir", type=pathlib.Path, default=None,
                   help="folder of <id>.npy (T, F) features to use instead of log-Mel")
    p.add_argument("--frame-rate", type=float, default=None,
                   help="frames per second of precomputed features (default 100)")
    p.add_argument("--num-mels", type=int, default=None)
    p.add_argument("--num-utterances", type=int, default=None, help=_only("num_utterances"))
    p.add_argument("--num-speakers", type=int, default=None, help=_only("num_speakers"))
    p.add_argument("--difficulty", type=float, default=None, help=_only("difficulty"))
    p.add_argument("--lexicon", type=int, default=None,
                   help=f"words per class spoken in the utterances ({_only('lexicon')})")
    p.add_argument("--flat", default=None,
                   help="emotion parameters made to carry no class, comma-separated "
                        f"({_only('flat')})")
    p.add_argument("--seed", type=int, default=None, help=_only("seed"))
    p.add_argument("--balance", type=int, default=None,
                   help=f"keep the N longest turns per participant ({_only('balance')})")
    p.add_argument("--workers", type=int, default=2,
                   help="processes extracting features (1: this process)")
    p.add_argument("--overwrite", action="store_true", help="rebuild a prepared configuration")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hrf_jax.data.preparation import prepare

    options = {k: v for k, v in {
        "features_dir": args.features_dir, "frame_rate": args.frame_rate,
        "num_mels": args.num_mels, "num_utterances": args.num_utterances,
        "num_speakers": args.num_speakers, "difficulty": args.difficulty, "lexicon": args.lexicon,
        "flat": args.flat, "seed": args.seed,
        "balance": args.balance}.items() if v is not None}
    try:
        prepare(args.name, data_dir=args.data_dir, manual_dir=args.manual_dir,
                manifest=args.manifest, workers=args.workers, overwrite=args.overwrite,
                **options)
    except (TypeError, ValueError) as err:  # LayoutError is a ValueError
        print(f"hrf-jax prepare: {err}", file=sys.stderr)
        return 2
    return 0
