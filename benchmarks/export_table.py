"""Exported models of the demo run: size, single-thread latency, peak RSS and WA/UA.

For the light, the merged light+HRF (``hrf-jax merge`` deploy folder) and the large model of
``runs/demo``, exports LiteRT without quantization, fp16, int8-dynamic and full int8, and
ONNX float32 (log-Mel input, fixed 3 s window), then per file:

* size in KB;
* latency of one 3 s utterance (300 frames) through ``hrf_jax/runtime.py``'s backend with one
  thread, in a fresh child process that never imports JAX: the median of ``--repeats`` runs
  per round, lowest over ``--rounds`` interleaved rounds (the machine may be shared);
* peak RSS of that child (Python + numpy + the runtime library + the model), and the part
  above the RSS it had after importing the runtime library;
* WA/UA on the test split, every utterance cut into the exported 3 s windows as the runtime
  does, next to the float32 JAX model of the checkpoint on the same windows.

``python -m benchmarks.export_table`` writes ``benchmarks/results/export_cpu.json`` and
``.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

MODELS = {  # name -> (export source keyword, path under --runs)
    "light": ("workdir", "light"),
    "light_hrf_merged": ("checkpoint", "light_hrf/deploy"),
    "large": ("workdir", "large"),
}
VARIANTS = [("tflite", "none"), ("tflite", "fp16"), ("tflite", "int8-dynamic"),
            ("tflite", "int8"), ("onnx", "none")]
SECONDS = 3.0

# Runs in a fresh interpreter: only numpy, the runtime library and runtime.py (by path).
CHILD = """
import importlib.util, json, sys, time
import numpy as np
path, runtime_py, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
if path.endswith(".onnx"):
    import onnxruntime  # noqa: F401
else:
    import ai_edge_litert.interpreter  # noqa: F401
def status_mb(key):  # VmHWM, not ru_maxrss: that keeps the parent's peak across exec
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
base = status_mb("VmRSS")
spec = importlib.util.spec_from_file_location("rt", runtime_py)
rt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rt)
run = rt.open_backend(path, num_threads=1)
meta = json.load(open(path + ".json"))
shape = meta["input"]["shape"]
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
length = np.asarray([shape[1]], np.int32)
for _ in range(5):
    run(x, length)
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    run(x, length)
    times.append(time.perf_counter() - t0)
peak = status_mb("VmHWM")
print(json.dumps({"median_ms": float(np.median(times) * 1e3),
                  "p90_ms": float(np.percentile(times, 90) * 1e3),
                  "rss_base_mb": base, "rss_peak_mb": peak}))
"""


def latency(path: pathlib.Path, repeats: int) -> dict[str, Any]:
    """One child process: single-thread latency and peak RSS of ``path``."""
    from hrf_jax import runtime

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), runtime.__file__,
                           str(repeats)], capture_output=True, text=True, env=env,
                          timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"latency child failed on {path}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cached(fn):
    """``(signal, length) -> logits`` memoised on the input bytes: the JAX reference is the
    same for every exported variant of a model."""
    memo: dict[tuple[str, int], np.ndarray] = {}

    def run(signal: np.ndarray, length: np.ndarray) -> np.ndarray:
        key = (hashlib.sha1(np.ascontiguousarray(signal).tobytes()).hexdigest(),
               int(length[0]))
        if key not in memo:
            memo[key] = fn(signal, length)
        return memo[key]

    return run


def machine() -> dict[str, Any]:
    """``hrf_jax.bench.machine.machine()`` plus the converter/runtime versions and the code's
    commit."""
    import importlib.metadata as md

    from hrf_jax.bench.machine import machine as base_machine

    versions = {}
    # the export extra installs `tensorflow`; earlier environments had `tensorflow-cpu`
    for name in ("jax", "tensorflow", "tensorflow-cpu", "ai-edge-litert", "onnxruntime",
                 "jax2onnx"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    try:  # the code the graphs came from (layers change export speed)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "hrf_jax"], capture_output=True,
                               text=True, check=True).stdout.strip()
        commit = head + (" + uncommitted hrf_jax changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {**base_machine(), "versions": versions, "commit": commit}


def measure(runs: pathlib.Path, model_dir: pathlib.Path, repeats: int, rounds: int,
            models: Sequence[str]) -> dict[str, Any]:
    from hrf_jax import runtime
    from hrf_jax.export import export_model, input_spec, load_source
    from hrf_jax.export.parity import evaluate_split, reference

    rows: list[dict[str, Any]] = []
    for name in models:
        kind, sub = MODELS[name]
        source = {kind: str(runs / sub)}
        if kind == "checkpoint" and not (runs / sub).is_dir():
            from hrf_jax.deploy import merge_run

            merge_run(str(runs / pathlib.Path(sub).parent))
        src = load_source(**source)
        spec = input_spec(src.info, False, SECONDS, False)
        jax_fp32 = cached(reference(src, False))
        for fmt, quantize in VARIANTS:
            out = model_dir / f"{name}_{quantize}.{fmt}"
            t0 = time.perf_counter()
            meta = export_model(fmt, out, **source, seconds=SECONDS, quantize=quantize,
                                num_check=16, eval_limit=16)
            export_s = time.perf_counter() - t0
            ev = evaluate_split(runtime.open_backend(out), jax_fp32, src, spec, "test", 10**9)
            rows.append({
                "model": name, "format": fmt, "quantize": quantize, "file": str(out),
                "size_kb": out.stat().st_size / 1024,
                "params": meta["source"]["params"],
                "conversion": meta["conversion"], "export_s": round(export_s, 1),
                "max_abs_logit_diff": meta["parity"]["max_abs_logit_diff"],
                "wa": ev["exported"]["wa"], "ua": ev["exported"]["ua"],
                "jax_fp32": ev["fp32_jax"], "agreement": ev["prediction_agreement"],
                "test_utterances": ev["utterances"], "latency_rounds": []})
            print(f"{name} {fmt} {quantize}: {rows[-1]['size_kb']:.0f} KB, WA "
                  f"{rows[-1]['wa']:.4f}, exported in {export_s:.0f} s", flush=True)
    # rounds over all files, interleaved, so a burst of load elsewhere hits one round only
    for _ in range(rounds):
        for row in rows:
            row["latency_rounds"].append(latency(pathlib.Path(row["file"]), repeats))
    for row in rows:
        best = min(row["latency_rounds"], key=lambda r: r["median_ms"])
        row["latency_ms"] = best["median_ms"]
        row["latency_p90_ms"] = best["p90_ms"]
        row["rss_peak_mb"] = max(r["rss_peak_mb"] for r in row["latency_rounds"])
        row["rss_model_mb"] = max(r["rss_peak_mb"] - r["rss_base_mb"]
                                  for r in row["latency_rounds"])
    return {"rows": rows}


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    s = result["settings"]
    lines = [
        "# Exported models on CPU (issue #6)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Code: {m['commit']}. Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ". "
        + (f"Load average at start {m['load_avg_at_start'][0]:.2f}"
           if "load_avg_at_start" in m else m.get("note", "")) + ".",
        "",
        f"Input: log-Mel features of one {s['seconds']:g} s utterance ({s['frames']} frames, "
        "the exported window). Latency: `hrf_jax/runtime.py` backend, 1 thread, median of "
        f"{s['repeats']} runs after 5 warm-up runs, lowest median of {s['rounds']} interleaved "
        "rounds, each file in a fresh process without JAX. Peak RSS: that process (Python, "
        "numpy, the runtime library and the model); in brackets the part above its RSS after "
        "importing the runtime library. WA/UA: test split of the demo corpus "
        f"({result['rows'][0]['test_utterances']} utterances), each cut into the exported "
        "windows as the runtime does; `JAX fp32` is the float32 JAX model of the exported "
        "checkpoint on the same windows (for light_hrf_merged the merged deploy model, which "
        "the demo found to predict exactly as the HRF model); agreement = same predicted "
        "class as JAX fp32; max |logit diff| against JAX fp32 over 16 validation windows.",
        "",
        "| model | format | quantize | size (KB) | latency (ms) | p90 (ms) | peak RSS (MB) "
        "| WA | UA | agreement | max \\|logit diff\\| |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    last = None
    for r in result["rows"]:
        if r["model"] != last:
            j = r["jax_fp32"]
            lines.append(f"| {r['model']} | JAX fp32 | - | | | | | {j['wa']:.3f} | "
                         f"{j['ua']:.3f} | | |")
            last = r["model"]
        lines.append(
            f"| {r['model']} | {r['format']} | {r['quantize']} | {r['size_kb']:,.0f} | "
            f"{r['latency_ms']:.2f} | {r['latency_p90_ms']:.2f} | {r['rss_peak_mb']:.0f} "
            f"({r['rss_model_mb']:.0f}) | {r['wa']:.3f} | {r['ua']:.3f} | "
            f"{r['agreement']:.3f} | {r['max_abs_logit_diff']:.1e} |")
    lines += [
        "",
        "`int8` is full-integer with float32 input/output; per attention layer the mask select "
        "and its softmax stay float (see `hrf_jax/export/litert.py`, `_full_int8`). `fp16` stores "
        "float16 weights that the CPU interpreter expands to float32 when loading; "
        "`int8-dynamic` stores int8 weights and quantizes activations at run time. ONNX "
        "exports are float32 only.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/demo", help="demo run (light, light_hrf, large)")
    p.add_argument("--out", default="benchmarks/results/export_cpu",
                   help="writes OUT.json and OUT.md")
    p.add_argument("--model-dir", default=None, help="exported files (default: a temp dir)")
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = p.parse_args(argv)
    model_dir = pathlib.Path(args.model_dir or tempfile.mkdtemp(prefix="hrf_export_"))
    model_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = {
        "command": "python -m benchmarks.export_table "
                   + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "machine": machine(),
        "settings": {"seconds": SECONDS, "frames": int(SECONDS * 100), "threads": 1,
                     "repeats": args.repeats, "rounds": args.rounds, "runs": args.runs},
        **measure(pathlib.Path(args.runs), model_dir, args.repeats, args.rounds, args.models),
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
