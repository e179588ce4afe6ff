"""``hrf-jax demo``: light, light+HRF and large models on the synthetic corpus, then deHRF."""

from __future__ import annotations

import argparse

from hrf_jax.models import BACKBONES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="the main job on the synthetic corpus")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--backbone", default="conformer", choices=BACKBONES)
    p.add_argument("--hrf-ratio", type=int, default=4)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-utterances", type=int, default=960,
                   help="size of the synthetic corpus (0: its full default size)")
    p.add_argument("--num-speakers", type=int, default=0,
                   help="speakers of the synthetic corpus (0: its default)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-frames", type=int, default=160, help="training crop length (frames)")
    p.add_argument("--data-dir", default="", help="default: $HRF_JAX_DATA or ~/hrf_jax_data")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hrf_jax.demo import run_demo

    run_demo(args.workdir, backbone=args.backbone, hrf_ratio=args.hrf_ratio,
             epochs=args.epochs, seed=args.seed, num_utterances=args.num_utterances,
             num_speakers=args.num_speakers, batch_size=args.batch_size,
             max_frames=args.max_frames, data_dir=args.data_dir,
             progress=not args.no_progress)
    return 0
