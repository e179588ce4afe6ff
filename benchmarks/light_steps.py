"""Light-model train steps of this checkout against a git revision, alternated in one process.

The Conformer and ConvTransformer light train steps (AdamW of the default config,
``make_train_step``, batch 32, 128 log-Mel bins, ragged masks) for each crop length, built
twice: from the working tree and from ``--baseline``'s ``subsampling.py``, ``attention.py``,
``layers.py``, ``conformer.py`` and ``convtransformer.py`` (loaded from ``git show`` into
temporary modules; every other module is the working tree's, so the comparison isolates those
files). All steps are
compiled first; then each round times ``--steps`` steps of every (model, crop) pair, baseline
and current in alternating order, so drift on a shared machine hits both. Prints a table of
the per-step medians and ranges with the load average, and writes JSON; never asserts a time.

``python -m benchmarks.light_steps --baseline HEAD --out benchmarks/results/light_steps.json``
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks.ab import load_baseline_modules, ms_range, run_meta, summary_ms
from hrf_jax.hugepages import exec_with_hugepages

BACKBONES = ("conformer", "convtransformer")
# in import order: a later file's ``from hrf_jax.<name> import`` of an earlier one is rewired
FILES = {"subsampling": "hrf_jax/subsampling.py", "attention": "hrf_jax/attention.py",
         "layers": "hrf_jax/layers.py", "conformer": "hrf_jax/models/conformer.py",
         "convtransformer": "hrf_jax/models/convtransformer.py"}


def load_baseline(rev: str, folder: pathlib.Path) -> dict[str, Any]:
    """``{backbone: module}`` of ``rev``'s model files, importing ``rev``'s subsampling."""
    modules = load_baseline_modules(rev, FILES, folder)
    return {b: modules[b] for b in BACKBONES}


def make_batch(frames: int, batch: int = 32, bins: int = 128, seed: int = 0) -> dict[str, Any]:
    """Random features, ragged prefix masks (half to full length; row 0 full) and labels."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(frames // 2, frames + 1, batch)
    lengths[0] = frames
    return {"feats": rng.standard_normal((batch, frames, bins)).astype(np.float32),
            "mask": np.arange(frames)[None] < lengths[:, None],
            "label": rng.integers(0, 4, batch).astype(np.int32)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare against")
    parser.add_argument("--frames", type=int, nargs="+", default=[160, 300])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON path")
    args = parser.parse_args(argv)

    import jax

    from hrf_jax.config import default_config
    from hrf_jax.hrf import HRFSpec
    from hrf_jax.models.registry import build_model
    from hrf_jax.train import DataParallel, create_state, make_optimizer, make_train_step

    parallel = DataParallel()
    tx = make_optimizer(default_config().optimizer, 1000)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        baseline = load_baseline(args.baseline, pathlib.Path(tmp))
        cells: dict[tuple[str, int, str], list[Any]] = {}
        for backbone in args.backbones:
            for frames in args.frames:
                batch = make_batch(frames)
                placed = parallel.put_batch(batch)
                current = build_model(backbone, "light", num_classes=4)
                old = baseline[backbone]
                models = {"baseline": old.MODEL(old.CONFIGS["light"], 4, HRFSpec()),
                          "current": current}
                for which, model in models.items():
                    state = create_state(model, tx, jax.random.PRNGKey(0), batch["feats"][:1],
                                         batch["mask"][:1])
                    step = make_train_step(model, tx, parallel)
                    t0 = time.perf_counter()
                    for _ in range(2):  # the second call compiles again for the returned state
                        state, stats = step(state, placed)
                        jax.block_until_ready(stats)
                    print(f"compiled {backbone} T={frames} {which} "
                          f"in {time.perf_counter() - t0:.1f} s", flush=True)
                    cells[(backbone, frames, which)] = [step, state, placed, []]

        order = ["baseline", "current"]
        for r in range(args.rounds):
            for backbone in args.backbones:
                for frames in args.frames:
                    for which in order if r % 2 == 0 else order[::-1]:
                        cell = cells[(backbone, frames, which)]
                        step, state, placed, times = cell
                        for _ in range(args.steps):
                            t0 = time.perf_counter()
                            state, stats = step(state, placed)
                            jax.block_until_ready(stats)
                            times.append(time.perf_counter() - t0)
                        cell[1] = state
            print(f"round {r + 1}/{args.rounds} done, load {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for backbone in args.backbones:
        for frames in args.frames:
            row: dict[str, Any] = {"backbone": backbone, "size": "light", "frames": frames,
                                   "batch": 32}
            for which in ("baseline", "current"):
                row[which] = summary_ms(cells[(backbone, frames, which)][3])
            row["speedup"] = row["baseline"]["median_ms"] / row["current"]["median_ms"]
            rows.append(row)
    result = {"baseline": args.baseline, "rounds": args.rounds, "steps": args.steps,
              **run_meta(load_start), "rows": rows}
    load_end = result["loadavg_end"]
    print(f"\nload average start {load_start}, end {load_end}; fp32 matmul peak "
          f"{result['matmul_peak_gflops']:.0f} GFLOP/s")
    print("| model | T | baseline ms (median, range) | current ms (median, range) | speed-up |")
    print("|---|---|---|---|---|")
    for row in rows:
        a, b = (ms_range(row[k], 0) for k in ("baseline", "current"))
        print(f"| {row['backbone']} light | {row['frames']} | {a} | {b} | {row['speedup']:.2f}x |")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    exec_with_hugepages()
    main()
