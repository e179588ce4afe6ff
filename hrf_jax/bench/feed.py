"""Does the input pipeline keep the train step fed? The same jit-compiled step timed on one
batch already in device memory and on batches read, cropped and placed by ``TrainLoader``
exactly as ``hrf_jax.loop.fit`` does (prefetching included); both end with one host sync.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np


def feed_check(backbone: str, variant: str, steps: int = 20, batch: int = 32,
               max_frames: int = 300) -> dict[str, Any]:
    """Step time (ms) with in-memory batches and with the real pipeline, on the default
    synthetic corpus (prepared on first use); ``overhead`` = pipeline / in-memory - 1."""
    import jax

    from hrf_jax.config import default_config
    from hrf_jax.data import TrainLoader
    from hrf_jax.run import model_from_config, open_dataset
    from hrf_jax.train import DataParallel, create_state, make_optimizer, make_train_step

    cfg = default_config()
    cfg.model.backbone = backbone
    cfg.model.size = "large" if variant == "large" else "light"
    cfg.model.hrf_ratio = 4 if variant == "light_hrf4" else 0
    ds = open_dataset(cfg.dataset, prepare=True)
    model = model_from_config(cfg.model, len(ds.class_names))
    loader = TrainLoader(ds.train, batch_size=batch, max_frames=max_frames, seed=0)
    steps = min(steps, len(loader) - 1)
    parallel = DataParallel()
    tx = make_optimizer(cfg.optimizer, 1000)
    first = next(iter(loader.epoch(0)))
    state = parallel.replicate(create_state(model, tx, jax.random.PRNGKey(0),
                                            first["feats"][:1], first["mask"][:1]))
    step = make_train_step(model, tx, parallel)
    placed = parallel.put_batch(first)
    state, stats = step(state, placed)  # compile
    jax.block_until_ready(stats)

    def timed(batches: Iterable[Any]) -> float:
        nonlocal state
        t0 = time.perf_counter()
        for b in batches:
            state, stats = step(state, b)
        jax.block_until_ready(stats)
        return (time.perf_counter() - t0) / steps

    rounds = []
    for r in range(3):  # alternate the two feeds so drift on a shared machine hits both
        memory = timed(placed for _ in range(steps))
        it = loader.epoch(r + 1)
        pipeline = timed(parallel.put_batch(next(it)) for _ in range(steps))
        rounds.append((memory, pipeline))
    memory, pipeline = (float(np.median(x)) for x in zip(*rounds, strict=True))
    return {"backbone": backbone, "variant": variant, "batch": batch, "frames": max_frames,
            "steps": steps, "in_memory_ms": memory * 1e3, "pipeline_ms": pipeline * 1e3,
            "overhead": pipeline / memory - 1}
