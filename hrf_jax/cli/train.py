"""``hrf-jax train``: train (or resume) a run in a workdir, with ``--config.a.b=v`` overrides."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train (or resume) a model in a workdir",
        description="Overrides: --config.section.field=value, e.g. "
                    "--config.model.hrf_ratio=4 --config.optimizer.lr=1e-3")
    p.add_argument("--workdir", required=True)
    p.add_argument("--config-file", default=None,
                   help="Python file with get_config() (e.g. one written for "
                        "experiments/grids.py) or a run's config.json")
    p.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from hrf_jax.config import apply_overrides, load_config
    from hrf_jax.loop import fit
    from hrf_jax.run import is_main_process

    config = load_config(args.config_file)
    apply_overrides(config, args.overrides)
    summary = fit(config, args.workdir)
    test = summary["test"]
    if test and is_main_process():
        print(f"test (checkpoint of epoch {summary['selected']['epoch']}): "
              f"WA {test['wa']:.4f} UA {test['ua']:.4f} macro-F1 {test['macro_f1']:.4f}")
    return 0
