"""The whole benchmark of ``hrf-jax bench``: every config's measurements in one result dict.

Times are medians after warm-up; the result keeps every raw number, ``report`` rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hrf_jax.bench.feed import feed_check
from hrf_jax.bench.machine import machine, matmul_peak_gflops
from hrf_jax.bench.measure import inference, paired_latency, runtime_latency
from hrf_jax.bench.worker import train


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark described by parsed ``hrf-jax bench`` arguments (``scaling`` and
    ``pipeline`` as ``(backbone, variant)`` pairs)."""
    result: dict[str, Any] = {"machine": machine(), "batch": args.batch,
                              "train_frames": args.frames, "latency_frames": args.latency_frames,
                              "command": " ".join(sys.argv), "rows": [], "scaling": []}
    result["matmul_peak_gflops_start"] = matmul_peak_gflops()
    _log(f"matmul peak {result['matmul_peak_gflops_start']:.1f} GFLOP/s")
    for backbone in args.backbones:
        for variant in args.variants:
            if variant == "S" and backbone != "speechformer":
                continue
            row = {"backbone": backbone, "variant": variant,
                   **inference(backbone, variant, args.latency_frames, args.repeats_latency)}
            row["train"] = {}
            # the merged model trains as the plain light model does: measured once, as light
            if variant != "light_merged" and not (args.skip_large_train and variant == "large"):
                for t in args.frames:
                    row["train"][str(t)] = train(backbone, variant, t, args.batch,
                                                 args.repeats, args.timeout)
            _log(json.dumps(row))
            result["rows"].append(row)
    for backbone, variant in args.scaling:
        for t in args.scaling_frames:
            sc = {"backbone": backbone, "variant": variant, "frames": t,
                  **train(backbone, variant, t, args.batch, args.repeats, args.timeout)}
            _log(json.dumps(sc))
            result["scaling"].append(sc)
    result["paired"] = [paired_latency(b, args.latency_frames, args.repeats_paired)
                        for b in args.backbones if args.repeats_paired]
    for pair in result["paired"]:
        _log(json.dumps(pair))
    result["runtimes"] = [runtime_latency(p, args.latency_frames, args.repeats_latency)
                          for p in args.exported]
    # measured again at the end: a neighbour can slow the machine for a while, and a low
    # peak would flatter the MFU, so MFU uses the higher of the two
    result["matmul_peak_gflops_end"] = matmul_peak_gflops()
    result["matmul_peak_gflops"] = max(result["matmul_peak_gflops_start"],
                                       result["matmul_peak_gflops_end"])
    result["pipeline"] = []
    for backbone, variant in args.pipeline:
        result["pipeline"].append(feed_check(backbone, variant, batch=args.batch))
        _log(json.dumps(result["pipeline"][-1]))
    return result
