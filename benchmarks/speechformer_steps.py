"""SpeechFormer-S before/after, alternated in one process: train step and one utterance.

The baseline is ``--baseline``'s ``local_attention.py``, ``attention.py``, ``layers.py`` and
``models/speechformer.py`` (loaded from ``git show`` into temporary modules that import each
other; every other module is the working tree's). Shapes are those of the side-by-side with
the official code (``hrf_jax.bench.reference``): SpeechFormer-S on 128 features, a train step
at batch 32, T=651, every frame real, SGD momentum 0.9, dropout on; and one utterance (batch 1,
T=651) in eval mode. Everything is compiled first; then each round times ``--steps`` train
steps and ``--calls`` utterances of baseline and current, in alternating order, so drift on a
shared machine hits both. Prints medians and ranges with the load average; never asserts.

``python -m benchmarks.speechformer_steps --baseline HEAD --out /tmp/sf_steps.json``
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

from benchmarks.ab import load_baseline_modules, ms_range, run_meta, summary_ms, timed
from hrf_jax.hugepages import exec_with_hugepages

# module name -> file; loaded in this order, each importing the baseline copies before it
FILES = {"local_attention": "hrf_jax/local_attention.py", "attention": "hrf_jax/attention.py",
         "layers": "hrf_jax/layers.py", "speechformer": "hrf_jax/models/speechformer.py"}


def load_baseline(rev: str, folder: pathlib.Path) -> Any:
    """``rev``'s speechformer module, wired to ``rev``'s attention/layers/local_attention."""
    return load_baseline_modules(rev, FILES, folder)["speechformer"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare against")
    parser.add_argument("--frames", type=int, default=651)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="train steps per side per round")
    parser.add_argument("--calls", type=int, default=20, help="utterances per side per round")
    parser.add_argument("--out", default=None, help="JSON path")
    args = parser.parse_args(argv)

    import jax
    import optax

    from hrf_jax.bench.variants import FEAT_DIM, NUM_CLASSES, build_variant
    from hrf_jax.hrf import HRFSpec
    from hrf_jax.train import DataParallel, create_state, make_train_step
    from hrf_jax.xla_options import eval_compiler_options

    rng = np.random.default_rng(0)
    b, t = args.batch, args.frames
    batch = {"feats": rng.standard_normal((b, t, FEAT_DIM)).astype(np.float32),
             "mask": np.ones((b, t), bool),
             "label": (np.arange(b) % NUM_CLASSES).astype(np.int32)}
    one = jax.device_put((batch["feats"][:1], batch["mask"][:1]))
    parallel = DataParallel()
    tx = optax.sgd(1e-3, momentum=0.9)
    placed = parallel.put_batch(batch)
    load_start = os.getloadavg()
    cells: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        old = load_baseline(args.baseline, pathlib.Path(tmp))
        current = build_variant("speechformer", "S")
        models = {"baseline": old.MODEL(current.cfg, NUM_CLASSES, HRFSpec()),
                  "current": current}
        for which, model in models.items():
            state = create_state(model, tx, jax.random.PRNGKey(0), batch["feats"][:1],
                                 batch["mask"][:1])
            step = make_train_step(model, tx, parallel)
            t0 = time.perf_counter()
            for _ in range(2):  # the second call compiles again for the returned state
                state, stats = step(state, placed)
                jax.block_until_ready(stats)
            variables = {"params": jax.tree.map(jax.numpy.copy, state.params)}
            infer = jax.jit(lambda v, f, m, model=model: model.apply(v, f, m, train=False),
                            compiler_options=eval_compiler_options(model, utterance=True))
            jax.block_until_ready(infer(variables, *one))
            print(f"compiled {which} in {time.perf_counter() - t0:.1f} s", flush=True)
            cells[which] = {"step": step, "state": state, "infer": infer,
                            "variables": variables, "train": [], "utterance": []}

        order = ["baseline", "current"]
        for r in range(args.rounds):
            for which in order if r % 2 == 0 else order[::-1]:
                cell = cells[which]

                def train_once(cell: dict[str, Any] = cell) -> None:
                    cell["state"], stats = cell["step"](cell["state"], placed)
                    jax.block_until_ready(stats)

                def infer_once(cell: dict[str, Any] = cell) -> None:
                    jax.block_until_ready(cell["infer"](cell["variables"], *one))

                cell["train"] += timed(train_once, args.steps)
                cell["utterance"] += timed(infer_once, args.calls)
            print(f"round {r + 1}/{args.rounds} done, load {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for kind in ("train", "utterance"):
        row: dict[str, Any] = {"measure": kind}
        for which in order:
            row[which] = summary_ms(cells[which][kind])
        row["speedup"] = row["baseline"]["median_ms"] / row["current"]["median_ms"]
        rows.append(row)
    result = {"baseline": args.baseline, "frames": t, "batch": b, "rounds": args.rounds,
              **run_meta(load_start), "rows": rows}
    load_end = result["loadavg_end"]
    print(f"\nload average start {load_start}, end {load_end}; fp32 matmul peak "
          f"{result['matmul_peak_gflops']:.0f} GFLOP/s")
    print("| SpeechFormer-S | baseline ms (median, range) | current ms (median, range) | "
          "speed-up |")
    print("|---|---|---|---|")
    labels = {"train": f"train step b{b} T={t}", "utterance": f"one utterance T={t}"}
    for row in rows:
        a, c = (ms_range(row[k]) for k in ("baseline", "current"))
        print(f"| {labels[row['measure']]} | {a} | {c} | {row['speedup']:.2f}x |")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    exec_with_hugepages()
    main()
