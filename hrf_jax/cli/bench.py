"""``hrf-jax bench``: params, FLOPs, train-step time, latency, peak RSS and MFU per config."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hrf_jax.bench.variants import VARIANTS
from hrf_jax.models import BACKBONES

DESCRIPTION = (
    "Params, forward FLOPs and latency of one utterance, train-step time, utterances/s, MFU and "
    "peak RSS per backbone and variant; every train measurement runs in a fresh process "
    "(python -m hrf_jax.bench.worker). Prints markdown tables; --out writes the JSON. "
    "With --reference-speechformer DIR it runs only the side-by-side with the official "
    "PyTorch SpeechFormer-S instead.")


def config_pair(spec: str) -> tuple[str, str]:
    """``"backbone:variant"`` -> ``(backbone, variant)``, both checked against the registries."""
    backbone, sep, variant = spec.partition(":")
    if not sep or backbone not in BACKBONES or variant not in VARIANTS:
        raise argparse.ArgumentTypeError(
            f"{spec!r} is not backbone:variant with a backbone from {', '.join(BACKBONES)} "
            f"and a variant from {', '.join(VARIANTS)}")
    return backbone, variant


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``bench`` and its options."""
    p = subparsers.add_parser("bench", help="speed, memory and size benchmarks",
                              description=DESCRIPTION)
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    p.add_argument("--variants", nargs="+", default=["light", "light_hrf4", "light_merged",
                                                     "large", "S"], choices=list(VARIANTS))
    p.add_argument("--frames", nargs="*", type=int, default=[300, 651],
                   help="training crop lengths (none: latency and sizes only)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--latency-frames", type=int, default=300, help="one utterance (3 s)")
    p.add_argument("--scaling", nargs="*", type=config_pair,
                   default=[("speechformer", "light"), ("speechformer", "S")],
                   help="backbone:variant pairs for the growth-with-T table")
    p.add_argument("--scaling-frames", nargs="+", type=int,
                   default=[150, 300, 651, 1200, 2400])
    p.add_argument("--repeats", type=int, default=5, help="timed train steps")
    p.add_argument("--repeats-latency", type=int, default=30)
    p.add_argument("--repeats-paired", type=int, default=200,
                   help="alternated plain/merged latency calls per backbone (0: skip)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per train measurement")
    p.add_argument("--skip-large-train", action="store_true")
    p.add_argument("--exported", nargs="*", default=[],
                   help=".tflite / .onnx files of a merged model (batch 1, latency-frames)")
    p.add_argument("--pipeline", nargs="*", type=config_pair,
                   default=[("conformer", "light")],
                   help="backbone:variant pairs whose step is timed on in-memory batches and "
                        "on the real input pipeline (synthetic corpus, prepared on first use)")
    p.add_argument("--quick", action="store_true",
                   help="fewer variants, T=300 only, 3 repeats, short scaling: a few minutes")
    p.add_argument("--out", default=None, help="JSON file to write")
    ref = p.add_argument_group(
        "side by side with the official SpeechFormer",
        "Alternating processes, official (PyTorch) then hrf_jax, --pairs times: SpeechFormer-S "
        "on 128-dim features, train step (--batch, --reference-frames, every frame real, SGD "
        "momentum 0.9, --repeats steps) and one utterance (--repeats-latency calls); reports "
        "per-pair ratios official / hrf_jax (median and range), both matmul peaks and MFU. "
        "--timeout applies per process.")
    ref.add_argument("--reference-speechformer", metavar="DIR", default=None,
                     help="a checkout of the official SpeechFormer code (its model/speechformer"
                          ".py is imported from there at run time); runs only the side-by-side")
    ref.add_argument("--reference-python", metavar="PATH", default=sys.executable,
                     help="python that has torch and numpy (default: this interpreter)")
    ref.add_argument("--reference-device", choices=("cpu", "gpu"), default="cpu",
                     help="device of both sides (cpu keeps JAX on the CPU; gpu: CUDA, TF32 "
                          "matmuls in torch as in XLA's default)")
    ref.add_argument("--reference-frames", type=int, default=651,
                     help="frames per utterance, > 100 (651: the official 6.5 s crop)")
    ref.add_argument("--pairs", type=int, default=5, help="alternating process pairs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark (or the side-by-side), print its tables and write the JSON to
    ``args.out``."""
    if args.reference_speechformer:
        from hrf_jax.bench.reference import side_by_side
        from hrf_jax.bench.report import render_side_by_side

        try:
            result = side_by_side(
                args.reference_speechformer, args.reference_python, pairs=args.pairs,
                frames=args.reference_frames, batch=args.batch, repeats=args.repeats,
                latency_repeats=args.repeats_latency, device=args.reference_device,
                timeout=args.timeout, log=lambda msg: print(msg, file=sys.stderr, flush=True))
        except RuntimeError as err:  # a worker failed: its stderr tail says why
            print(f"hrf-jax bench: {err}", file=sys.stderr)
            return 1
        print(render_side_by_side(result))
    else:
        from hrf_jax.bench.report import render
        from hrf_jax.bench.suite import run as run_suite

        if args.quick:
            args.variants = [v for v in args.variants if v not in ("large",)]
            args.frames, args.repeats, args.repeats_latency = [300], 3, 10
            args.scaling, args.scaling_frames = [("speechformer", "light")], [150, 651, 2400]
        result = run_suite(args)
        print(render(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0
