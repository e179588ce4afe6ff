"""Cost of a compiled computation: FLOPs from XLA's cost analysis and median wall-clock time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from hrf_jax.xla_options import eval_compiler_options


def compiled_flops(compiled: Any) -> float:
    """FLOPs of a ``jax.jit(...).lower(...).compile()`` result as XLA's cost analysis counts them
    (0.0 where the backend reports none)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax returns one dict per computation
        cost = cost[0] if cost else {}
    return float(cost.get("flops", 0.0)) if cost else 0.0


def median_latency_ms(fn: Callable, *args: Any, repeats: int = 30, warmup: int = 3) -> float:
    """Median milliseconds of ``fn(*args)`` after ``warmup`` calls, each waited for with
    ``jax.block_until_ready``; ``fn`` should already be compiled."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def forward_cost(model: Any, variables: dict, frames: int, feature_dim: int,
                 repeats: int = 30) -> dict[str, float]:
    """FLOPs and median latency of one utterance (batch 1, ``frames`` frames) in eval mode,
    from one compilation."""
    feats = np.random.default_rng(0).standard_normal((1, frames, feature_dim)).astype(np.float32)
    mask = np.ones((1, frames), bool)
    fn = lambda v, f, m: model.apply(v, f, m, train=False)
    # on the device once: host (numpy) leaves would be copied in on every timed call
    variables, feats, mask = jax.device_put((variables, feats, mask))
    options = eval_compiler_options(model, utterance=True)
    compiled = jax.jit(fn, compiler_options=options).lower(variables, feats, mask).compile()
    return {"flops": compiled_flops(compiled),
            "latency_ms": median_latency_ms(compiled, variables, feats, mask, repeats=repeats)}
