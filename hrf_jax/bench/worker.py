"""One train-step measurement per fresh process: JAX runtime start, compile and steps.

``python -m hrf_jax.bench.worker '["speechformer", "S", 651, 32, 5]'`` (backbone, variant,
frames, batch, repeats) prints the measurement as one JSON line; ``train`` runs it that way.
A JSON object passes ``train_worker``'s keyword options too (the side-by-side with the
official SpeechFormer uses SGD, full masks, the one-utterance latency and the matmul peak).
``peak_rss_mb`` is the worker's own ``VmHWM`` (``hrf_jax.bench.procmem``), not ``ru_maxrss``,
which Linux carries over from the parent at exec.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import numpy as np

from hrf_jax.bench.procmem import peak_rss_mb
from hrf_jax.bench.variants import FEAT_DIM, NUM_CLASSES, build_variant


def train_worker(backbone: str, variant: str, frames: int, batch: int, repeats: int, *,
                 optimizer: str = "adamw", ragged: bool = True, latency_repeats: int = 0,
                 matmul_peak: bool = False) -> dict[str, Any]:
    """Time, FLOPs and peak RSS of the jit train step on one batch (B, frames, F).

    ``ragged``: lengths 60-100 % of the crop, as in a padded batch; else every frame is real.
    ``optimizer``: ``"adamw"`` (the project's default recipe) or ``"sgd"`` (lr 1e-3, momentum
    0.9, nothing else: the official SpeechFormer training script's optimizer).
    ``latency_repeats`` > 0 adds the eval-mode latency of one utterance (batch 1, frames) with
    the trained parameters; ``matmul_peak`` adds this process's fp32 2048^3 matmul GFLOP/s.
    """
    import jax
    import optax

    from hrf_jax.bench.machine import matmul_peak_gflops
    from hrf_jax.config import default_config
    from hrf_jax.profiling import compiled_flops, forward_cost, median_latency_ms
    from hrf_jax.reparam import count_params
    from hrf_jax.train import DataParallel, create_state, make_optimizer, make_train_step

    rss0 = peak_rss_mb()
    model = build_variant(backbone, variant)
    rng = np.random.default_rng(0)
    lengths = rng.integers(int(0.6 * frames), frames + 1, batch) if ragged else np.full(
        batch, frames)
    data = {"feats": rng.standard_normal((batch, frames, FEAT_DIM)).astype(np.float32),
            "mask": np.arange(frames)[None] < lengths[:, None],
            "label": (np.arange(batch) % NUM_CLASSES).astype(np.int32)}
    parallel = DataParallel()
    if optimizer == "sgd":
        tx = optax.sgd(1e-3, momentum=0.9)
    elif optimizer == "adamw":
        tx = make_optimizer(default_config().optimizer, 1000)
    else:
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
    state = parallel.replicate(create_state(model, tx, jax.random.PRNGKey(0),
                                            data["feats"][:1], data["mask"][:1]))
    step = make_train_step(model, tx, parallel)
    placed = parallel.put_batch(data)
    t0 = time.perf_counter()
    flops = compiled_flops(step.lower(state, placed).compile())
    compile_s = time.perf_counter() - t0
    holder = [state]

    def one() -> Any:
        holder[0], stats = step(holder[0], placed)
        return stats

    step_s = median_latency_ms(one, repeats=repeats, warmup=2) / 1e3
    # the jit cache must hold one entry: a second compile would mean retracing per batch
    cache = step._cache_size() if hasattr(step, "_cache_size") else None
    out = {"step_ms": step_s * 1e3, "utt_per_s": batch / step_s, "train_flops": flops,
           "gflops_per_s": flops / step_s / 1e9, "compile_s": compile_s,
           "jit_cache_entries": cache, "params": count_params(holder[0].params)}
    if latency_repeats:
        trained = holder[0]
        variables = {"params": trained.params, **(
            {"batch_stats": trained.batch_stats} if trained.batch_stats else {})}
        out["latency_ms"] = forward_cost(model, variables, frames, FEAT_DIM,
                                         repeats=latency_repeats)["latency_ms"]
    if matmul_peak:
        out["matmul_peak_gflops"] = matmul_peak_gflops()
    stats = jax.devices()[0].memory_stats() or {}  # None on CPU; peak bytes on GPU
    return {**out, "device_peak_mb": stats.get("peak_bytes_in_use", 0) / 2**20 or None,
            "peak_rss_mb": peak_rss_mb(), "rss_at_start_mb": rss0,
            "device": str(jax.devices()[0]), "jax": jax.__version__}


def train(backbone: str, variant: str, frames: int, batch: int, repeats: int,
          timeout: float) -> dict[str, Any]:
    """``train_worker`` in a subprocess; ``{"error": ...}`` when it fails or times out."""
    cmd = [sys.executable, "-m", "hrf_jax.bench.worker",
           json.dumps([backbone, variant, frames, batch, repeats])]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(json.dumps(train_worker(**spec) if isinstance(spec, dict) else train_worker(*spec)))
