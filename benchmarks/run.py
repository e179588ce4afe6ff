"""``hrf-jax bench``: params, FLOPs, train-step time, latency, peak RSS and MFU per config.

Every train measurement runs in a fresh subprocess so that its ``ru_maxrss`` is the peak
resident memory of that measurement alone (JAX runtime, compile and steps included).
Times are medians after warm-up; the JSON keeps every raw number, the table rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BACKBONES = ("conformer", "speechformer", "convtransformer")
# variant -> (size, hrf_ratio, merged, extra build_model overrides)
VARIANTS: dict[str, tuple[str, int, bool, dict[str, Any]]] = {
    "light": ("light", 0, False, {}),
    "light_hrf4": ("light", 4, False, {}),
    "light_merged": ("light", 4, True, {}),
    "large": ("large", 0, False, {}),
    # SpeechFormer-S: expand (1,1,1) on the 128-dim features (the official comparison point)
    "S": ("light", 0, False, {"input_dim_proj": None}),
}
FEAT_DIM, NUM_CLASSES = 128, 4


def _median_s(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _flops(compiled: Any) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 ``n^3`` matmul throughput of this machine in jax, GFLOP/s (median)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    return 2 * n**3 / _median_s(lambda: f(a, a), repeats, 2) / 1e9


def _build(backbone: str, variant: str):
    from hrf_jax.models import build_model

    size, ratio, _, extra = VARIANTS[variant]
    return build_model(backbone, size, num_classes=NUM_CLASSES, hrf_ratio=ratio, **extra)


def inference(backbone: str, variant: str, frames: int, repeats: int) -> dict[str, Any]:
    """Params, forward FLOPs and jit latency of one utterance (batch 1) in eval mode."""
    import jax

    from hrf_jax.reparam import count_params, merge_hrf

    model = _build(backbone, variant)
    feats = np.random.default_rng(0).standard_normal((1, frames, FEAT_DIM)).astype(np.float32)
    mask = np.ones((1, frames), bool)
    variables = model.init(jax.random.PRNGKey(0), feats, mask)
    if VARIANTS[variant][2]:  # deploy the merged tree on the plain model
        variables = merge_hrf(variables)
        model = _build(backbone, "light")
    fn = jax.jit(lambda v, x, m: model.apply(v, x, m, train=False))
    compiled = fn.lower(variables, feats, mask).compile()
    latency = _median_s(lambda: compiled(variables, feats, mask), repeats, 3)
    return {"params": count_params(variables["params"]), "fwd_flops": _flops(compiled),
            "latency_ms": latency * 1e3}


def paired_latency(backbone: str, frames: int, repeats: int) -> dict[str, Any]:
    """Plain light model vs the merged HRF tree on it, called alternately in one process so
    that drift on a shared machine hits both: the method's promise is a ratio of 1."""
    import jax

    from hrf_jax.reparam import merge_hrf

    feats = np.random.default_rng(0).standard_normal((1, frames, FEAT_DIM)).astype(np.float32)
    mask = np.ones((1, frames), bool)
    plain = _build(backbone, "light")
    fn = jax.jit(lambda v, x, m: plain.apply(v, x, m, train=False))
    trees = {"light": plain.init(jax.random.PRNGKey(0), feats, mask),
             "light_merged": merge_hrf(_build(backbone, "light_hrf4").init(
                 jax.random.PRNGKey(0), feats, mask))}
    compiled = {k: fn.lower(v, feats, mask).compile() for k, v in trees.items()}
    times: dict[str, list[float]] = {k: [] for k in trees}
    for i in range(repeats + 3):
        for k in (("light", "light_merged") if i % 2 else ("light_merged", "light")):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled[k](trees[k], feats, mask))
            if i >= 3:  # warm-up
                times[k].append(time.perf_counter() - t0)
    ms = {k: float(np.median(v) * 1e3) for k, v in times.items()}
    return {"backbone": backbone, "frames": frames, "light_ms": ms["light"],
            "merged_ms": ms["light_merged"], "ratio": ms["light_merged"] / ms["light"]}


def train_worker(backbone: str, variant: str, frames: int, batch: int,
                 repeats: int) -> dict[str, Any]:
    """One train-step measurement (run in its own process): time, FLOPs, peak RSS."""
    import jax

    from hrf_jax.config import default_config
    from hrf_jax.train import DataParallel, create_state, make_optimizer, make_train_step

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = _build(backbone, variant)
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
    flops = _flops(step.lower(state, placed).compile())
    compile_s = time.perf_counter() - t0
    holder = [state]

    def one() -> Any:
        holder[0], stats = step(holder[0], placed)
        return stats

    step_s = _median_s(one, repeats, 2)
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
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "benchmarks.run", "--_worker",
           json.dumps([backbone, variant, frames, batch, repeats])]
    try:
        out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def runtime_latency(path: str, frames: int, repeats: int) -> dict[str, Any]:
    """LiteRT / ONNX Runtime latency of an exported file, 1 thread and all threads."""
    x = np.random.default_rng(0).standard_normal((1, frames, FEAT_DIM)).astype(np.float32)
    result: dict[str, Any] = {"file": path}
    for threads in (1, os.cpu_count() or 1):
        try:
            if path.endswith(".onnx"):
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.intra_op_num_threads = threads
                sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
                feeds = {i.name: (x if i.type == "tensor(float)" else np.ones((1, frames), bool))
                         for i in sess.get_inputs()}
                call = lambda s=sess, f=feeds: s.run(None, f)
            else:
                from ai_edge_litert.interpreter import Interpreter

                interp = Interpreter(model_path=path, num_threads=threads)
                interp.allocate_tensors()
                for d in interp.get_input_details():
                    interp.set_tensor(d["index"], x if d["dtype"] == np.float32
                                      else np.ones(d["shape"], d["dtype"]))
                call = interp.invoke
        except ImportError as err:
            return {"file": path, "skipped": f"runtime not installed ({err.name})"}
        for _ in range(3):
            call()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        result[f"latency_ms_{threads}_threads"] = float(np.median(times) * 1e3)
    return result


def machine() -> dict[str, Any]:
    import jax

    cpu = platform.processor()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                    if ln.startswith("Model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()], "python": platform.python_version(),
            "load_avg_at_start": os.getloadavg()}


def _fmt(x: Any, spec: str = ",.1f") -> str:
    return "-" if x is None else format(x, spec)


def _section(title: str, head: list[str], rows: list[list[Any]]) -> str:
    """A titled markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return f"\n{title}\n\n" + "\n".join(lines) + "\n"


def render(result: dict[str, Any]) -> str:
    """Markdown tables of a ``run`` result."""
    peak = result["matmul_peak_gflops"]
    t_cols = result["train_frames"]
    frames = result.get("latency_frames", 300)
    head = ["backbone", "variant", "params", f"MFLOPs fwd (T={frames})",
            f"latency ms (B=1, T={frames})"]
    for t in t_cols:
        head += [f"step ms T={t}", f"utt/s T={t}", f"MFU T={t}", f"peak RSS MB T={t}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        cells = [row["backbone"], row["variant"], _fmt(row.get("params"), ","),
                 _fmt(row.get("fwd_flops", 0) / 1e6), _fmt(row.get("latency_ms"), ".2f")]
        for t in t_cols:
            tr = row.get("train", {}).get(str(t), {})
            mfu = tr.get("gflops_per_s", 0) / peak if "step_ms" in tr else None
            cells += [_fmt(tr.get("step_ms"), ".0f"), _fmt(tr.get("utt_per_s")),
                      _fmt(mfu, ".1%"), _fmt(tr.get("peak_rss_mb"), ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines) + (
        f"\n\nfp32 matmul peak (2048^3, jax; MFU divides by it): {peak:.1f} GFLOP/s "
        f"(start {result.get('matmul_peak_gflops_start', peak):.1f}, "
        f"end {result.get('matmul_peak_gflops_end', peak):.1f})\n")
    if result.get("scaling"):
        rows = []
        for sc in result["scaling"]:
            ref = next((s.get("step_ms") for s in result["scaling"]
                        if s["frames"] == 651 and s["variant"] == sc["variant"]
                        and s["backbone"] == sc["backbone"]), None)
            ratio = sc["step_ms"] / ref if ref and "step_ms" in sc else None
            rows.append([sc["backbone"], sc["variant"], sc["frames"],
                         _fmt(sc.get("step_ms"), ".0f"), _fmt(ratio, ".2f"),
                         _fmt(sc.get("peak_rss_mb"), ".0f")])
        out += _section(f"Growth with T (train step, batch {result['batch']}):",
                        ["backbone", "variant", "T", "step ms", "x step at 651", "peak RSS MB"],
                        rows)
    if result.get("paired"):
        out += _section(
            "Merged HRF vs plain light model, one utterance, calls alternated in one process:",
            ["backbone", "T", "plain ms", "merged ms", "merged / plain"],
            [[p["backbone"], p["frames"], f"{p['light_ms']:.3f}", f"{p['merged_ms']:.3f}",
              f"{p['ratio']:.3f}"] for p in result["paired"]])
    if result.get("pipeline"):
        frames = result["pipeline"][0]["frames"]
        out += _section(
            f"Input pipeline (train step, synthetic corpus, T={frames}):",
            ["backbone", "variant", "in-memory ms/step", "pipeline ms/step", "overhead"],
            [[p["backbone"], p["variant"], f"{p['in_memory_ms']:.1f}",
              f"{p['pipeline_ms']:.1f}", f"{p['overhead']:+.1%}"] for p in result["pipeline"]])
    for rt in result.get("runtimes", []):
        out += f"\nruntime {json.dumps(rt)}\n"
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark described by parsed ``args``."""
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    result: dict[str, Any] = {"machine": machine(), "batch": args.batch,
                              "train_frames": args.frames, "latency_frames": args.latency_frames,
                              "command": " ".join(sys.argv), "rows": [], "scaling": []}
    result["matmul_peak_gflops_start"] = matmul_peak_gflops()
    log(f"matmul peak {result['matmul_peak_gflops_start']:.1f} GFLOP/s")
    for backbone in args.backbones:
        for variant in args.variants:
            if variant == "S" and backbone != "speechformer":
                continue
            row = {"backbone": backbone, "variant": variant,
                   **inference(backbone, variant, args.latency_frames, args.repeats_latency)}
            row["train"] = {}
            # the merged model trains as the plain light model does: measured once, as light
            if variant != "light_merged" and not (args.skip_large_train and variant == "large"):
                for t in args.frames:
                    row["train"][str(t)] = train(backbone, variant, t, args.batch,
                                                 args.repeats, args.timeout)
            log(json.dumps(row))
            result["rows"].append(row)
    for backbone, variant in [tuple(s.split(":")) for s in args.scaling]:
        for t in args.scaling_frames:
            sc = {"backbone": backbone, "variant": variant, "frames": t,
                  **train(backbone, variant, t, args.batch, args.repeats, args.timeout)}
            log(json.dumps(sc))
            result["scaling"].append(sc)
    result["paired"] = [paired_latency(b, args.latency_frames, args.repeats_paired)
                        for b in args.backbones if args.repeats_paired]
    for pair in result["paired"]:
        log(json.dumps(pair))
    result["runtimes"] = [runtime_latency(p, args.latency_frames, args.repeats_latency)
                          for p in args.exported]
    # measured again at the end: a neighbour can slow the machine for a while, and a low
    # peak would flatter the MFU, so MFU uses the higher of the two
    result["matmul_peak_gflops_end"] = matmul_peak_gflops()
    result["matmul_peak_gflops"] = max(result["matmul_peak_gflops_start"],
                                       result["matmul_peak_gflops_end"])
    result["pipeline"] = []
    for backbone, variant in [tuple(s.split(":")) for s in args.pipeline]:
        from benchmarks.pipeline import feed_check

        result["pipeline"].append(feed_check(backbone, variant, batch=args.batch))
        log(json.dumps(result["pipeline"][-1]))
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    p.add_argument("--variants", nargs="+", default=["light", "light_hrf4", "light_merged",
                                                     "large", "S"], choices=list(VARIANTS))
    p.add_argument("--frames", nargs="*", type=int, default=[300, 651],
                   help="training crop lengths (none: latency and sizes only)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--latency-frames", type=int, default=300, help="one utterance (3 s)")
    p.add_argument("--scaling", nargs="*", default=["speechformer:light", "speechformer:S"],
                   help="backbone:variant pairs for the growth-with-T table")
    p.add_argument("--scaling-frames", nargs="+", type=int,
                   default=[150, 300, 651, 1200, 2400])
    p.add_argument("--repeats", type=int, default=5, help="timed train steps")
    p.add_argument("--repeats-latency", type=int, default=30)
    p.add_argument("--repeats-paired", type=int, default=200,
                   help="alternated plain/merged latency calls per backbone (0: skip)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per train measurement")
    p.add_argument("--skip-large-train", action="store_true")
    p.add_argument("--exported", nargs="*", default=[],
                   help=".tflite / .onnx files of a merged model (batch 1, latency-frames)")
    p.add_argument("--pipeline", nargs="*", default=["conformer:light"],
                   help="backbone:variant pairs whose step is timed on in-memory batches and "
                        "on the real input pipeline (synthetic corpus, prepared on first use)")
    p.add_argument("--quick", action="store_true",
                   help="fewer variants, T=300 only, 3 repeats, short scaling: a few minutes")
    p.add_argument("--out", default=None, help="JSON file to write")


def main_from_args(args: argparse.Namespace) -> int:
    if args.quick:
        args.variants = [v for v in args.variants if v not in ("large",)]
        args.frames, args.repeats, args.repeats_latency = [300], 3, 10
        args.scaling, args.scaling_frames = ["speechformer:light"], [150, 651, 2400]
    result = run(args)
    print(render(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_worker"]:
        print(json.dumps(train_worker(*json.loads(argv[1]))))
        return 0
    parser = argparse.ArgumentParser(prog="hrf-jax bench", description=__doc__)
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
