"""Populations on one accelerator: train steps/s and examples/s of K members in one step.

    PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false python3 -m experiments.gpu_population \
        --out pop.json --ks 1 8 32 128 --budget-s 400

For each light backbone and K, one cell: K = 1 is the plain ``make_train_step`` (what a
sequential run executes), K > 1 the vmapped ``make_population_step``; the large models get
the plain step only. Every cell trains on random batches ``(K, B, T, 128)`` with ragged
masks (60-100 % of the crop) and its own members' inits and rngs. The cells' programs are
compiled first, in ``--compile-workers`` threads (XLA compiles outside the GIL; a compile
time is its wall time among the others; cells not compiled within 60 % of the budget are
skipped). Then each backbone's cells are timed in interleaved rounds (order reversed every
round, so drift hits all K alike): the step time is the median over rounds of
``round time / --steps``. ``x sequential`` = K * (K = 1 step) / (K step).
A cell that fails (out of memory, say) is recorded with its error; cells not reached within
``--budget-s`` are recorded as skipped. ``--start-after FILE`` lets the compiles overlap other
work on the accelerator (training runs, say): timing waits until FILE exists and then has
the rest of the budget, ``(1 - COMPILE_SHARE) * --budget-s``, from that moment. Imports
only what the train step needs (jax, flax, optax, ml_collections; no TFDS or grain): no data
set is read.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hrf_jax.config import default_config
from hrf_jax.models import build_model
from hrf_jax.population import create_population, make_population_step, shard_members
from hrf_jax.train import DataParallel, create_state, make_optimizer, make_train_step

FEAT_DIM, NUM_CLASSES = 128, 4
BACKBONES = ("conformer", "speechformer", "convtransformer")
COMPILE_SHARE = 0.6  # of --budget-s; cells still compiling then are skipped


def random_batch(key: jax.Array, shape: tuple[int, ...], frames: int) -> dict[str, jax.Array]:
    """Features ``(*shape, frames, FEAT_DIM)``, ragged masks and labels, made on the device."""
    kf, kl, ky = jax.random.split(key, 3)
    lengths = jax.random.randint(kl, shape, int(0.6 * frames), frames + 1)
    return {"feats": jax.random.normal(kf, (*shape, frames, FEAT_DIM), jnp.float32),
            "mask": jnp.arange(frames) < lengths[..., None],
            "label": jax.random.randint(ky, shape, 0, NUM_CLASSES)}


def prepare(cell: dict[str, Any], args: argparse.Namespace, parallel: DataParallel) -> dict:
    """Model, members' states, batch, the compiled step of one cell and its compile time (the
    cell itself is left alone: this runs in a worker thread)."""
    model = build_model(cell["backbone"], cell["size"], num_classes=NUM_CLASSES)
    tx = make_optimizer(default_config().optimizer, 1000)
    k = cell["k"]
    example = random_batch(jax.random.PRNGKey(0), (1,), args.frames)
    keys = jax.random.split(jax.random.PRNGKey(0), k)  # member i: its own init and rng
    if k == 1:
        state = parallel.replicate(create_state(model, tx, keys[0], example["feats"],
                                                example["mask"]))
        batch = parallel.put_batch(jax.device_get(
            random_batch(jax.random.PRNGKey(1), (args.batch,), args.frames)))
        step = make_train_step(model, tx, parallel)
    else:
        state = shard_members(create_population(model, tx, keys, example["feats"],
                                                example["mask"]), parallel)
        batch = shard_members(random_batch(jax.random.PRNGKey(1), (k, args.batch),
                                           args.frames), parallel)
        step = make_population_step(model, tx, parallel)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    return {"state": state, "batch": batch, "step": compiled,
            "compile_s": time.perf_counter() - t0}


def run_rounds(cells: list[dict], ready: dict[int, dict], args: argparse.Namespace,
               deadline: float) -> None:
    """Warm-up step, then interleaved timed rounds of ``args.steps`` steps per cell."""
    live = [c for c in cells if c["id"] in ready]
    for r in range(-1, args.rounds):  # round -1: one warm-up step each, not timed
        if r >= 0 and time.perf_counter() > deadline:
            for c in live:
                c.setdefault("note", f"budget reached after {r} rounds")
            break
        for c in (live if r % 2 == 0 else live[::-1]):
            if "error" in c:
                continue
            run = ready[c["id"]]
            n = 1 if r < 0 else args.steps
            try:
                t0 = time.perf_counter()
                for _ in range(n):
                    run["state"], stats = run["step"](run["state"], run["batch"])
                jax.block_until_ready(stats)
                if r >= 0:
                    c.setdefault("round_step_s", []).append((time.perf_counter() - t0) / n)
            except Exception as err:  # out of memory, mostly: record it and go on
                c["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                ready.pop(c["id"]).clear()  # frees the cell's device buffers
    for c in live:
        if c.get("round_step_s"):
            times = c["round_step_s"]
            c["step_s"] = float(np.median(times))
            c["step_s_range"] = [min(times), max(times)]
            c["steps_per_s"] = 1 / c["step_s"]
            c["examples_per_s"] = c["k"] * args.batch / c["step_s"]
        ready.pop(c["id"], {}).clear()


def table(cells: list[dict]) -> str:
    """Markdown table of the cells, ``x sequential`` against the same backbone's K = 1."""
    head = ["backbone", "size", "K", "step", "compile s", "step ms (median, range)",
            "steps/s", "examples/s", "x sequential"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        base = next((b for b in cells if b["backbone"] == c["backbone"]
                     and b["size"] == c["size"] and b["k"] == 1 and "step_s" in b), None)
        if "step_s" in c:
            lo, hi = (1e3 * x for x in c["step_s_range"])
            timing = [f"{1e3 * c['step_s']:.1f} ({lo:.1f}-{hi:.1f})",
                      f"{c['steps_per_s']:.2f}", f"{c['examples_per_s']:,.0f}",
                      f"{c['k'] * base['step_s'] / c['step_s']:.2f}" if base else "-"]
        else:
            timing = [c.get("error") or c.get("note", "-"), "-", "-", "-"]
        compile_s = f"{c['compile_s']:.1f}" if "compile_s" in c else "-"
        lines.append("| " + " | ".join([c["backbone"], c["size"], str(c["k"]),
                                        "plain" if c["k"] == 1 else "population", compile_s,
                                        *timing]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON result path")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--backbones", nargs="*", default=list(BACKBONES),
                        help="light backbones timed at every K")
    parser.add_argument("--large", nargs="*", default=list(BACKBONES),
                        help="backbones whose large model is timed at K = 1")
    train = default_config().train  # the grids' batch size and crop
    parser.add_argument("--batch", type=int, default=train.batch_size, help="per member")
    parser.add_argument("--frames", type=int, default=train.max_frames, help="crop length")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--compile-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--start-after", default=None, metavar="FILE",
                        help="compile, then time only once FILE exists (module docstring)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.budget_s
    parallel = DataParallel(jax.devices()[:1])  # one accelerator: the member axis unsplit
    groups = [[{"backbone": b, "size": "light", "k": k} for k in args.ks]
              for b in args.backbones]
    groups += [[{"backbone": b, "size": "large", "k": 1}] for b in args.large]
    cells = [c for g in groups for c in g]
    for i, c in enumerate(cells):
        c["id"] = i
    device = jax.devices()[0]
    result = {"device": device.device_kind, "platform": device.platform,
              "jax": jax.__version__, "python": platform.python_version(),
              "cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
              "command": " ".join(sys.argv), "args": vars(args), "cells": cells}
    print(f"{device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
    pool = concurrent.futures.ThreadPoolExecutor(args.compile_workers)
    futures = {c["id"]: pool.submit(prepare, c, args, parallel) for c in cells}
    # every compile ends before any timing starts: tracing in a worker thread holds the GIL
    # and would slow the dispatch of the steps being timed
    concurrent.futures.wait(futures.values(), timeout=COMPILE_SHARE * args.budget_s)
    if args.start_after is not None:
        while not os.path.exists(args.start_after):  # compiles may go on meanwhile
            time.sleep(0.5)
        deadline = time.perf_counter() + (1 - COMPILE_SHARE) * args.budget_s
    ready = {}
    timing_start = result["timing_began_s"] = time.perf_counter() - start
    for c in cells:
        future = futures[c["id"]]
        if not future.done():
            future.cancel()
            c["note"] = f"skipped: not compiled when timing began ({timing_start:.0f} s)"
        elif future.exception() is not None:
            err = future.exception()
            c["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        else:
            ready[c["id"]] = future.result()
            c["compile_s"] = ready[c["id"]]["compile_s"]
    for group in groups:
        run_rounds(group, ready, args, deadline)
        for c in group:
            print(json.dumps({k: v for k, v in c.items() if k != "round_step_s"}), flush=True)
        result["wall_s"] = time.perf_counter() - start
        stats = device.memory_stats() or {}  # None on CPU
        result["device_peak_mb"] = stats.get("peak_bytes_in_use", 0) / 2**20 or None
        with open(args.out, "w") as f:  # after every group: a killed run keeps what it got
            json.dump(result, f, indent=2)
    print(table(cells))
    print(f"wall {result['wall_s']:.0f} s; JSON: {args.out}", flush=True)
    if any(not f.done() for f in futures.values()):
        os._exit(0)  # a compile still running past the budget cannot be cancelled
    pool.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
