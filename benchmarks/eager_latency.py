"""One utterance through the light models, PyTorch eager mode vs hrf_jax, same weights,
alternating fresh processes.

    python -m benchmarks.eager_latency --reference-python ~/torchenv/bin/python --pairs 5 \
        --out benchmarks/results/eager_latency_cpu.json

The references (``--models``; SpeechFormer's is the official code, ``hrf-jax bench
--reference-speechformer``):

- ``conformer``: ESPnet's own Conformer ``Encoder`` (``benchmarks/espnet_worker.py``; the
  reference python needs ``pip install torch espnet``);
- ``convtransformer``: fairseq's ConvTransformer encoder built from PyTorch modules under
  fairseq's parameter names (``benchmarks/convtransformer_worker.py``; needs torch only; fairseq
  does not import on Python 3.11).

Neither torch nor espnet is a dependency of hrf_jax. Each reference process builds its encoder
at hrf_jax's light size with a linear head on the time-mean, times one utterance (batch 1,
``no_grad``, eval mode) per length and, in the first pair, writes its weights, an input and the
logits. Each hrf_jax process converts those weights (``from_espnet_conformer`` /
``from_fairseq_convtransformer``, the reference presets), checks its logits against the
reference's at highest matmul precision (the comparison is of one function) and times the
jitted eval-mode forward at the same lengths. Prints per-length medians, ranges and per-pair
ratios (reference / hrf_jax) with the load average; writes JSON; never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
from typing import Any

from hrf_jax.bench.reference import run_worker, spread
from hrf_jax.hugepages import exec_with_hugepages

HERE = pathlib.Path(__file__).parent
# model -> (reference worker script, what the reference is, hrf_jax converter)
MODELS = {
    "conformer": ("espnet_worker.py", "ESPnet Conformer Encoder", "from_espnet_conformer"),
    "convtransformer": ("convtransformer_worker.py",
                        "fairseq ConvTransformer encoder in PyTorch modules",
                        "from_fairseq_convtransformer"),
}


def hrf_jax_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The reference's weights in hrf_jax's model: the logits' largest deviation from the
    reference's (highest matmul precision) and the default-precision jit latency per length."""
    import jax
    import numpy as np

    from hrf_jax import convert
    from hrf_jax.profiling import median_latency_ms
    from hrf_jax.xla_options import eval_compiler_options

    data = np.load(spec["npz"])
    state = {k.removeprefix("state_dict/"): data[k] for k in data.files
             if k.startswith("state_dict/")}
    converter = getattr(convert, MODELS[spec["model"]][2])
    model, variables = converter(state, num_heads=4, head=(data["head_weight"], data["head_bias"]))
    forward = jax.jit(lambda v, x, m: model.apply(v, x, m),
                      compiler_options=eval_compiler_options(model, utterance=True))
    x = data["x"]
    with jax.default_matmul_precision("highest"):  # part of jit's cache key: its own trace
        got = forward(variables, x, np.ones(x.shape[:2], bool))
    result: dict[str, Any] = {
        "jax": jax.__version__, "max_abs_logit_err": float(np.abs(got - data["logits"]).max()),
        "params": int(sum(p.size for p in jax.tree.leaves(variables["params"]))),
        "latency_ms": {}}
    rng = np.random.default_rng(0)
    for frames in spec["frames"]:
        feats = rng.standard_normal((1, frames, x.shape[-1])).astype(np.float32)
        mask = np.ones((1, frames), bool)
        result["latency_ms"][str(frames)] = median_latency_ms(
            forward, variables, feats, mask, repeats=spec["repeats"], warmup=5)
    return result


def compare(model: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """``args.pairs`` alternating reference / hrf_jax processes for ``model``; its summary."""
    load_start = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {"reference": [], "hrf_jax": []}
    spec = {"frames": args.frames, "repeats": args.repeats, "model": model}
    with tempfile.TemporaryDirectory() as tmp:
        npz = str(pathlib.Path(tmp) / f"{model}_light.npz")
        for i in range(args.pairs):
            ref_spec = {**spec, "npz": npz} if i == 0 else spec
            runs["reference"].append(run_worker(
                [args.reference_python, str(HERE / MODELS[model][0]), json.dumps(ref_spec)],
                env, args.timeout))
            runs["hrf_jax"].append(run_worker(
                [sys.executable, "-m", "benchmarks.eager_latency", "--_worker",
                 json.dumps({**spec, "npz": npz})], env, args.timeout))
            print(f"{model} pair {i + 1}/{args.pairs}: reference "
                  f"{runs['reference'][-1]['latency_ms']}, hrf_jax "
                  f"{runs['hrf_jax'][-1]['latency_ms']}", flush=True)
    rows = []
    for frames in map(str, args.frames):
        ref = [r["latency_ms"][frames] for r in runs["reference"]]
        ours = [r["latency_ms"][frames] for r in runs["hrf_jax"]]
        rows.append({"frames": int(frames), "reference_ms": spread(ref),
                     "hrf_jax_ms": spread(ours),
                     "ratio": spread([a / b for a, b in zip(ref, ours, strict=True)])})
    return {"reference": MODELS[model][1],
            "load_avg": {"start": load_start, "end": os.getloadavg()},
            "max_abs_logit_err": max(r["max_abs_logit_err"] for r in runs["hrf_jax"]),
            "params": {"reference": runs["reference"][0]["params"],
                       "hrf_jax": runs["hrf_jax"][0]["params"]},
            "versions": {"torch": runs["reference"][0]["torch"],
                         "jax": runs["hrf_jax"][0]["jax"]},
            "threads": runs["reference"][0]["threads"], "rows": rows, "runs": runs}


def print_table(model: str, result: dict[str, Any], pairs: int) -> None:
    load = result["load_avg"]
    print(f"\n{model} light: {result['reference']} (torch {result['versions']['torch']}, "
          f"eager, {result['threads']} threads) vs hrf_jax (jax {result['versions']['jax']}, "
          f"jit), one utterance, same weights (logits differ by at most "
          f"{result['max_abs_logit_err']:.1e}); {pairs} alternating process pairs, "
          f"load {load['start'][0]:.2f} -> {load['end'][0]:.2f}")
    print("| T (frames) | reference ms | hrf_jax ms | reference / hrf_jax per pair |")
    print("|---|---|---|---|")
    for row in result["rows"]:
        a, b, r = row["reference_ms"], row["hrf_jax_ms"], row["ratio"]
        print(f"| {row['frames']} | {a['median']:.2f} ({a['min']:.2f}-{a['max']:.2f}) | "
              f"{b['median']:.2f} ({b['min']:.2f}-{b['max']:.2f}) | {r['median']:.2f} "
              f"({r['min']:.2f}-{r['max']:.2f}) |")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-python", default=sys.executable,
                        help="a python with torch (and espnet for the Conformer)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--frames", type=int, nargs="+", default=[300, 651])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", default=None, help="JSON path")
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        print(json.dumps(hrf_jax_worker(json.loads(args._worker))))
        return {}

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    models = {model: compare(model, args, env) for model in args.models}
    for model, result in models.items():
        print_table(model, result, args.pairs)
    result = {"command": " ".join(sys.orig_argv), "pairs": args.pairs,
              "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "models": models}
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    exec_with_hugepages()
    main()
