"""The ``hrf-jax`` command. All argparse code lives in this package, one module a subcommand.

Each ``hrf_jax/cli/<command>.py`` defines ``add_parser(subparsers)``, which registers the
subcommand with ``func=run`` (``run(args) -> int``). Module level imports only the standard
library and the light name registries, so ``--help`` and ``predict --model`` never import JAX;
a subcommand imports what it needs inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hrf_jax.hugepages import exec_with_hugepages
from hrf_jax.logs import LEVELS, set_verbosity

SUBCOMMANDS = ("demo", "prepare", "train", "eval", "merge", "predict", "export", "bench")


def build_parser() -> argparse.ArgumentParser:
    from hrf_jax import __version__

    parser = argparse.ArgumentParser(
        prog="hrf-jax",
        description="HRF training and exact deHRF merging of lightweight SER Transformers.")
    parser.add_argument("--version", action="version", version=f"hrf-jax {__version__}")
    parser.add_argument("--verbosity", choices=LEVELS, default="info",
                        help="messages shown: debug also shows TFDS/absl logs (default: info)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"hrf_jax.cli.{name}").add_parser(sub)
    return parser


def console() -> int:
    """The ``hrf-jax`` program: ``main`` in a process whose malloc uses huge pages
    (``hrf_jax.hugepages``; ``HRF_JAX_NO_HUGEPAGES=1`` turns that off)."""
    exec_with_hugepages()
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "accepts_overrides", False):
        args.overrides = extra
    elif extra:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    set_verbosity(args.verbosity)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as err:  # missing extra: names it
        print(f"hrf-jax {args.command}: {err}", file=sys.stderr)
        return 2
