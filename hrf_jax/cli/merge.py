"""``hrf-jax merge``: deHRF of a run's best checkpoint into the plain deploy model."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("merge", help="deHRF: best checkpoint -> plain deploy checkpoint")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", default=None, help="default: <workdir>/deploy")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hrf_jax.deploy import merge_run

    eq = merge_run(args.workdir, args.out)["equivalence"]
    print(f"merged {eq['hrf_layers']} HRF layers: {eq['params_hrf']:,} -> "
          f"{eq['params_merged']:,} parameters (plain model: {eq['params_plain']:,}); "
          f"max |logit diff| {eq['max_abs_err']:.2e} (relative {eq['max_rel_err']:.2e}) "
          f"over {eq['checked_utterances']} validation utterances")
    return 0
