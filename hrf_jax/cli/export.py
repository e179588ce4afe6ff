"""``hrf-jax export``: the merged model -> ``.tflite`` / ``.onnx`` with a JSON sidecar."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hrf_jax.export import FORMATS, FP32_TOLERANCE, QUANTIZE


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``export`` and its options."""
    p = subparsers.add_parser(
        "export", help="export the merged model to LiteRT / ONNX",
        description="Best checkpoint -> merge_hrf -> fold_batchnorm -> .tflite / .onnx with a "
                    "JSON sidecar FILE.json (classes, front-end, input shape, parity).")
    p.add_argument("--workdir", default=None, help="training run (uses its best checkpoint)")
    p.add_argument("--checkpoint", default=None, help="deploy folder written by `hrf-jax merge`")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="FILE.tflite or FILE.onnx")
    p.add_argument("--frontend", action="store_true",
                   help="graph takes raw 16 kHz mono audio (log-Mel + normalisation inside)")
    p.add_argument("--seconds", type=float, default=3.0, help="fixed input length")
    p.add_argument("--dynamic-time", action="store_true",
                   help="ONNX, log-Mel input, conformer / convtransformer only: symbolic "
                        "time axis instead of --seconds")
    p.add_argument("--quantize", default="none", choices=QUANTIZE, help="LiteRT only")
    p.add_argument("--num-check", type=int, default=16,
                   help="utterances for the float32 parity check")
    p.add_argument("--eval-limit", type=int, default=100,
                   help="test utterances for WA/UA of quantized models")
    p.add_argument("--tolerance", type=float, default=FP32_TOLERANCE,
                   help="max |logit diff| allowed for float32 exports")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export, print one summary line; a missing optional package exits with 2 before
    anything is loaded, a failed float32 parity check with 1."""
    from hrf_jax.export.extras import require_extras

    try:
        require_extras(args.format)
    except ModuleNotFoundError as err:
        print(f"hrf-jax export: {err}", file=sys.stderr)
        return 2
    from hrf_jax.export import ParityError, export_model

    try:
        meta = export_model(args.format, args.out, workdir=args.workdir,
                            checkpoint=args.checkpoint, frontend=args.frontend,
                            seconds=args.seconds, dynamic_time=args.dynamic_time,
                            quantize=args.quantize, num_check=args.num_check,
                            eval_limit=args.eval_limit, tolerance=args.tolerance)
    except ParityError as err:
        print(f"hrf-jax export: {err}", file=sys.stderr)
        return 1
    print(summary(args.out, meta))
    return 0


def summary(out: str, meta: dict[str, Any]) -> str:
    """One line: the files written, size, parity and (quantized) WA/UA."""
    from hrf_jax_runtime import sidecar_path

    p = meta["parity"]
    line = (f"wrote {out} ({meta['size_bytes']:,} bytes, {meta['format']}, "
            f"quantize={meta['quantize']}) and {sidecar_path(out)}; "
            f"max |logit diff| {p['max_abs_logit_diff']:.2e}, argmax agreement "
            f"{p['argmax_agreement']:.3f} over {p['utterances']} utterances")
    ev = p.get("evaluation", {})
    if "exported" in ev:
        line += (f"; {ev['split']} ({ev['utterances']}): WA {ev['exported']['wa']:.4f} "
                 f"UA {ev['exported']['ua']:.4f} (fp32 JAX: WA {ev['fp32_jax']['wa']:.4f} "
                 f"UA {ev['fp32_jax']['ua']:.4f})")
    return line
