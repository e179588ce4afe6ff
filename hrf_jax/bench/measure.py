"""Measurements of one config in this process: size, FLOPs and latency of one utterance."""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np

from hrf_jax.bench.variants import FEAT_DIM, build_variant, is_merged
from hrf_jax.profiling import compiled_flops, median_latency_ms
from hrf_jax.reparam import count_params, merge_hrf
from hrf_jax.xla_options import eval_compiler_options


def _utterance(frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Random features ``(1, frames, FEAT_DIM)`` and an all-true mask ``(1, frames)``."""
    feats = np.random.default_rng(0).standard_normal((1, frames, FEAT_DIM)).astype(np.float32)
    return feats, np.ones((1, frames), bool)


def inference(backbone: str, variant: str, frames: int, repeats: int) -> dict[str, Any]:
    """Params, forward FLOPs and jit latency of one utterance (batch 1) in eval mode."""
    model = build_variant(backbone, variant)
    feats, mask = _utterance(frames)
    variables = model.init(jax.random.PRNGKey(0), feats, mask)
    if is_merged(variant):  # deploy the merged tree on the plain model
        variables = merge_hrf(variables)
        model = build_variant(backbone, "light")
    fn = jax.jit(lambda v, x, m: model.apply(v, x, m, train=False),
                 compiler_options=eval_compiler_options(model, utterance=True))
    compiled = fn.lower(variables, feats, mask).compile()
    return {"params": count_params(variables["params"]), "fwd_flops": compiled_flops(compiled),
            "latency_ms": median_latency_ms(compiled, variables, feats, mask,
                                            repeats=repeats, warmup=3)}


def paired_latency(backbone: str, frames: int, repeats: int) -> dict[str, Any]:
    """Plain light model vs the merged HRF tree on it, called alternately in one process so
    that drift on a shared machine hits both: the method's promise is a ratio of 1."""
    feats, mask = _utterance(frames)
    plain = build_variant(backbone, "light")
    fn = jax.jit(lambda v, x, m: plain.apply(v, x, m, train=False),
                 compiler_options=eval_compiler_options(plain, utterance=True))
    trees = {"light": plain.init(jax.random.PRNGKey(0), feats, mask),
             "light_merged": merge_hrf(build_variant(backbone, "light_hrf4").init(
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


def runtime_latency(path: str, frames: int, repeats: int) -> dict[str, Any]:
    """LiteRT / ONNX Runtime latency of an exported file, 1 thread and all threads."""
    x, _ = _utterance(frames)
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
        # plain calls, not median_latency_ms: these runtimes return numpy, nothing to wait on
        for _ in range(3):
            call()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        result[f"latency_ms_{threads}_threads"] = float(np.median(times) * 1e3)
    return result
