"""One train-step measurement per fresh process: JAX runtime start, compile and steps.

``python -m hrf_jax.bench.worker '["speechformer", "S", 651, 32, 5]'`` (backbone, variant,
frames, batch, repeats) prints the measurement as one JSON line; ``train`` runs it that way.
``peak_rss_mb`` is the process's ``ru_maxrss``, which Linux carries over from the parent at
exec: it is never below the resident size of the process that started the worker.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np

from hrf_jax.bench.variants import FEAT_DIM, NUM_CLASSES, build_variant


def train_worker(backbone: str, variant: str, frames: int, batch: int,
                 repeats: int) -> dict[str, Any]:
    """Time, FLOPs and peak RSS of the jit train step on one ragged batch (B, frames, F)."""
    import jax

    from hrf_jax.config import default_config
    from hrf_jax.profiling import compiled_flops, median_latency_ms
    from hrf_jax.train import DataParallel, create_state, make_optimizer, make_train_step

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build_variant(backbone, variant)
    rng = np.random.default_rng(0)
    # ragged lengths (60-100 % of the crop), as in a padded batch
    lengths = rng.integers(int(0.6 * frames), frames + 1, batch)
    data = {"feats": rng.standard_normal((batch, frames, FEAT_DIM)).astype(np.float32),
            "mask": np.arange(frames)[None] < lengths[:, None],
            "label": (np.arange(batch) % NUM_CLASSES).astype(np.int32)}
    parallel = DataParallel()
    tx = make_optimizer(default_config().optimizer, 1000)
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
    stats = jax.devices()[0].memory_stats() or {}  # None on CPU; peak bytes on GPU
    return {"device_peak_mb": stats.get("peak_bytes_in_use", 0) / 2**20 or None,
            "step_ms": step_s * 1e3, "utt_per_s": batch / step_s, "train_flops": flops,
            "gflops_per_s": flops / step_s / 1e9, "compile_s": compile_s,
            "jit_cache_entries": cache,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_at_start_mb": rss0 / 1024}


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
    print(json.dumps(train_worker(*json.loads(sys.argv[1]))))
