"""What the PyTorch-eager reference workers of ``benchmarks/eager_latency.py`` share: time one
utterance per length and, on request, write the weights, an input and its logits.

Imported by the worker scripts (run by a python with torch, without hrf_jax), from their own
folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from statistics import median
from typing import Any

FEAT_DIM, NUM_CLASSES = 128, 4


def time_and_save(spec: dict[str, Any], encoder: Any, head: Any,
                  logits: Callable[[Any], Any]) -> dict[str, Any]:
    """Median milliseconds of ``logits`` on one random ``(1, T, FEAT_DIM)`` utterance for each
    ``spec["frames"]`` (5 warm-up calls, ``spec["repeats"]`` timed, ``no_grad``); with
    ``spec["npz"]`` also writes ``state_dict/<name>`` of ``encoder``, ``x``, its ``logits`` and
    ``head_weight``/``head_bias`` there, for hrf_jax's parity check."""
    import numpy as np
    import torch

    result: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                              "params": sum(p.numel() for p in encoder.parameters())
                              + sum(p.numel() for p in head.parameters()), "latency_ms": {}}
    with torch.no_grad():
        for frames in spec["frames"]:
            x = torch.randn(1, frames, FEAT_DIM)
            for _ in range(5):
                logits(x)
            times = []
            for _ in range(spec["repeats"]):
                t0 = time.perf_counter()
                logits(x)
                times.append(time.perf_counter() - t0)
            result["latency_ms"][str(frames)] = median(times) * 1e3
        if spec.get("npz"):
            x = torch.randn(1, spec["frames"][0], FEAT_DIM)
            arrays = {f"state_dict/{k}": v.numpy() for k, v in encoder.state_dict().items()
                      if v.dtype.is_floating_point}
            np.savez(spec["npz"], **arrays, x=x.numpy(), logits=logits(x).numpy(),
                     head_weight=head.weight.numpy(), head_bias=head.bias.numpy())
    return result
