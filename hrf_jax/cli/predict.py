"""``hrf-jax predict``: emotion and probabilities of audio files, one JSON line each."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="emotion + probabilities of audio files (JSON lines)")
    p.add_argument("audio", nargs="+")
    p.add_argument("--workdir", default=".", help="uses <workdir>/deploy")
    p.add_argument("--checkpoint", default=None, help="a deploy folder written by merge")
    p.add_argument("--model", default=None,
                   help="an exported FILE.tflite or FILE.onnx (with FILE.json beside it) "
                        "instead of the JAX deploy checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.model:  # an exported model: numpy + LiteRT/onnxruntime, no JAX in this path
        from hrf_jax_runtime import ExportedModel

        exported = ExportedModel(args.model)
        for path in args.audio:
            print(json.dumps(exported.predict_file(path)))
        return 0
    from hrf_jax.deploy import predict_files
    from hrf_jax.run import DEPLOY_DIR, Run

    deploy = Run.load(args.checkpoint or Path(args.workdir) / DEPLOY_DIR)
    for row in predict_files(args.audio, deploy.model(), deploy.variables("deploy"),
                             deploy.info):
        print(json.dumps(row))
    return 0
