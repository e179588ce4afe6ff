"""Train and eval steps compiled under several XLA CPU compiler options, alternated in one process.

How ``hrf_jax.xla_options`` was chosen: for each ``--cells`` entry (``backbone:variant:frames``,
batch 32, SGD lr 1e-3 momentum 0.9, every frame real) the pure train step is jit-compiled
once per ``--options`` entry with that entry's ``compiler_options`` (``default``: XLA's own;
the others set ``xla_cpu_experimental_ynn_fusion_type``, which YNNPACK fusions XLA forms),
with ``--utterance`` also the one-utterance eval forward and with ``--eval`` the eval forward
of the whole batch (``--skip-train``: those only). Each round times ``--steps`` steps of every
option in alternating order; the table gives medians and ranges and the loss of each option's
first step (the options change the compiled program, not what it computes). Options this
jaxlib does not know fail at compile time. Prints and writes JSON; never asserts.

``python -m benchmarks.compiler_options --cells speechformer:S:651 --options default dots``
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
from typing import Any

import numpy as np

from benchmarks.ab import ms_range, run_meta, summary_ms, timed
from hrf_jax.hugepages import exec_with_hugepages

KIND = "xla_cpu_experimental_ynn_fusion_type"
LIBRARY = "LIBRARY_FUSION_TYPE_"
# name -> YNNPACK fusion kinds ("" = none: every op to XLA's own emitters and Eigen)
YNN_KINDS = {"dots": "DOT", "individual_dots": "INDIVIDUAL_DOT",
             "dots+individual": "DOT,INDIVIDUAL_DOT", "dots+eltwise": "DOT,ELTWISE",
             "dots+reduce": "DOT,REDUCE", "reduce": "REDUCE", "none": ""}


def compiler_options(name: str) -> dict[str, str]:
    """``default`` -> ``{}``; a ``YNN_KINDS`` name -> its fusion-type option."""
    if name == "default":
        return {}
    kinds = [k for k in YNN_KINDS[name].split(",") if k]
    return {KIND: ",".join(LIBRARY + k for k in kinds)}


def measure_cell(cell: str, options: list[str], batch_size: int, rounds: int, steps: int,
                 utterance: bool, eval_batch: bool = False, train: bool = True
                 ) -> list[dict[str, Any]]:
    """One row per option of ``cell`` (``backbone:variant:frames``), alternated in rounds."""
    import jax
    import optax

    from hrf_jax.bench.variants import FEAT_DIM, NUM_CLASSES, build_variant
    from hrf_jax.train import create_state, train_step_fn

    backbone, variant, frames = cell.split(":")
    b, t = batch_size, int(frames)
    rng = np.random.default_rng(0)
    batch = jax.device_put({"feats": rng.standard_normal((b, t, FEAT_DIM)).astype(np.float32),
                            "mask": np.ones((b, t), bool),
                            "label": (np.arange(b) % NUM_CLASSES).astype(np.int32)})
    one = (batch["feats"][:1], batch["mask"][:1])
    model = build_variant(backbone, variant)
    tx = optax.sgd(1e-3, momentum=0.9)

    def infer(variables: Any, feats: Any, mask: Any) -> Any:
        return model.apply(variables, feats, mask, train=False)

    sides: dict[str, dict[str, Any]] = {}
    for name in options:
        opts = compiler_options(name)
        step = jax.jit(train_step_fn(model, tx), donate_argnums=(0,), compiler_options=opts)
        state, stats = step(create_state(model, tx, jax.random.PRNGKey(0), *one), batch)
        side = {"first_loss": float(stats["loss"]), "train": [], "utterance": [], "eval": []}
        variables = jax.tree.map(jax.numpy.copy, {"params": state.params, **(
            {"batch_stats": state.batch_stats} if state.batch_stats else {})})
        state, stats = step(state, batch)  # compiles again for the returned state
        jax.block_until_ready(stats)
        holder = [state]

        def train_once(step: Any = step, holder: list = holder) -> None:
            holder[0], stats = step(holder[0], batch)
            jax.block_until_ready(stats)

        side["train_once"] = train_once
        fn = jax.jit(infer, compiler_options=opts)
        for kind, inputs in (("utterance", one), ("eval", (batch["feats"], batch["mask"]))):
            if kind == "utterance" and utterance or kind == "eval" and eval_batch:
                jax.block_until_ready(fn(variables, *inputs))
                side[f"{kind}_once"] = lambda fn=fn, v=variables, x=inputs: (
                    jax.block_until_ready(fn(v, *x)))
        sides[name] = side
        print(f"compiled {cell} {name}", flush=True)
    for r in range(rounds):
        for name in options if r % 2 == 0 else options[::-1]:
            side = sides[name]
            if train:
                side["train"] += timed(side["train_once"], steps)
            if utterance:
                side["utterance"] += timed(side["utterance_once"], 20)
            if eval_batch:
                side["eval"] += timed(side["eval_once"], steps)
    rows = []
    for name, side in sides.items():
        row = {"cell": cell, "options": name, "compiler_options": compiler_options(name),
               "first_loss": side["first_loss"]}
        row.update({kind: summary_ms(side[kind]) for kind, on in (
            ("train", train), ("utterance", utterance), ("eval", eval_batch)) if on})
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", default=["speechformer:S:651"],
                        help="backbone:variant:frames (variants of hrf_jax.bench.variants)")
    parser.add_argument("--options", nargs="+", default=["default", "dots"],
                        choices=["default", *YNN_KINDS])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--utterance", action="store_true",
                        help="also time one utterance (batch 1, eval mode), 20 calls a round")
    parser.add_argument("--eval", action="store_true",
                        help="also time the eval forward of the whole batch, --steps a round")
    parser.add_argument("--skip-train", action="store_true",
                        help="time only the eval forwards (the train step still runs twice)")
    parser.add_argument("--out", default=None, help="JSON path")
    args = parser.parse_args(argv)

    load_start = os.getloadavg()
    rows = []
    for cell in args.cells:
        rows += measure_cell(cell, args.options, args.batch, args.rounds, args.steps,
                             args.utterance, args.eval, not args.skip_train)
        print(json.dumps(rows[-len(args.options):]), flush=True)
    result = {"batch": args.batch, "rounds": args.rounds, "steps": args.steps,
              **run_meta(load_start), "rows": rows}
    print(f"\nload average start {load_start}, end {result['loadavg_end']}; fp32 matmul peak "
          f"{result['matmul_peak_gflops']:.0f} GFLOP/s")
    print(f"| cell | options | train step ms (median, range) | one utterance ms | eval of "
          f"{args.batch} ms | first loss |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        cols = [ms_range(row[k]) if k in row else "-" for k in ("train", "utterance", "eval")]
        print(f"| {row['cell']} | {row['options']} | {' | '.join(cols)} | "
              f"{row['first_loss']:.6f} |")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    exec_with_hugepages()
    main()
