"""Side by side with the official SpeechFormer: ``hrf-jax bench --reference-speechformer DIR``.

The official PyTorch code is the user's checkout ``DIR`` (nothing of it is part of this
package), run by ``--reference-python`` (torch may live in another environment) in
``torch_worker.py``; hrf_jax's SpeechFormer-S runs in ``hrf_jax.bench.worker``. Both time the
same shapes: a training step (batch, frames, 128 features, every frame real, SGD momentum 0.9)
and one utterance in eval mode, and measure their fp32 matmul peak in the same process.
Reference and hrf_jax processes alternate (A B A B ...), so drift on a shared machine reaches
both sides of a pair; the summary is the median and range of the per-pair ratios
reference / hrf_jax. This module imports no JAX: the parent must leave an accelerator free.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import median
from typing import Any

from hrf_jax.bench.machine import host
from hrf_jax.bench.variants import FEAT_DIM, NUM_CLASSES

OFFICIAL_MODEL = Path("model") / "speechformer.py"
TORCH_WORKER = Path(__file__).with_name("torch_worker.py")
INSTALL_TORCH = ("python3 -m venv ~/torchenv && ~/torchenv/bin/pip install torch numpy, then "
                 "pass --reference-python ~/torchenv/bin/python")
SIDES = ("reference", "hrf_jax")
MIN_FRAMES = 100  # merges of 5, 5 and 4 frames leave one token at or below this length


class ReferenceSetupError(ValueError):
    """The reference checkout or its python is not usable (raised before any timing)."""


def check_reference(ref_dir: str, python: str) -> str:
    """The torch version ``python`` imports; ``ReferenceSetupError`` naming what is missing
    when ``ref_dir`` lacks the official model file or ``python`` cannot import torch/numpy."""
    model_file = Path(ref_dir) / OFFICIAL_MODEL
    if not model_file.is_file():
        raise ReferenceSetupError(
            f"{model_file} not found: --reference-speechformer must be a checkout of the "
            "official SpeechFormer code (HappyColor/SpeechFormer on GitHub)")
    try:
        proc = subprocess.run([python, "-c", "import numpy, torch; print(torch.__version__)"],
                              capture_output=True, text=True, timeout=300)
    except OSError as err:
        raise ReferenceSetupError(f"--reference-python {python} cannot run: {err}") from err
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise ReferenceSetupError(
            f"--reference-python {python} cannot import torch and numpy ({last}); install "
            f"them into a separate environment: {INSTALL_TORCH}")
    return proc.stdout.strip()


def commands(ref_dir: str, python: str, *, frames: int, batch: int, repeats: int,
             latency_repeats: int, device: str) -> dict[str, list[str]]:
    """The two worker command lines, reference and hrf_jax, for the same shapes."""
    ref = {"dir": str(Path(ref_dir).resolve()), "frames": frames, "batch": batch,
           "feat_dim": FEAT_DIM, "num_classes": NUM_CLASSES, "repeats": repeats,
           "latency_repeats": latency_repeats, "threads": os.cpu_count() or 1, "device": device}
    ours = {"backbone": "speechformer", "variant": "S", "frames": frames, "batch": batch,
            "repeats": repeats, "optimizer": "sgd", "ragged": False,
            "latency_repeats": latency_repeats, "matmul_peak": True}
    return {"reference": [python, str(TORCH_WORKER), json.dumps(ref)],
            "hrf_jax": [sys.executable, "-m", "hrf_jax.bench.worker", json.dumps(ours)]}


def worker_env(device: str) -> dict[str, str]:
    """The workers' environment: on ``cpu`` JAX is kept off any accelerator the host has."""
    env = dict(os.environ)
    if device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    return env


def run_worker(cmd: Sequence[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """One worker's JSON line; ``RuntimeError`` with its last stderr lines when it fails (a
    pair with a hole would make every ratio after it meaningless)."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              env=env)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"{cmd[:2]} timed out after {timeout:.0f} s") from err
    if proc.returncode:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"{' '.join(cmd[:2])} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max."""
    return {"median": float(median(values)), "min": float(min(values)),
            "max": float(max(values))}


def summarize(reference: Sequence[dict[str, Any]],
              ours: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-side medians/ranges and per-pair ratios reference / hrf_jax of the train step and
    the one-utterance latency, the matmul peaks, hrf_jax's MFU (XLA-counted FLOPs of its step
    / its own process's jax peak) and the reference's step at that same FLOP count divided by
    its torch peak."""
    pairs = list(zip(reference, ours, strict=True))
    out: dict[str, Any] = {"pairs": len(pairs)}
    for key in ("step_ms", "latency_ms"):
        out[key] = {"reference": spread([r[key] for r in reference]),
                    "hrf_jax": spread([o[key] for o in ours]),
                    "ratio": spread([r[key] / o[key] for r, o in pairs])}
    out["matmul_peak_gflops"] = {side: spread([w["matmul_peak_gflops"] for w in runs])
                                 for side, runs in zip(SIDES, (reference, ours), strict=True)}
    out["peak_rss_mb"] = {side: spread([w["peak_rss_mb"] for w in runs])
                          for side, runs in zip(SIDES, (reference, ours), strict=True)}

    def mfu(worker: dict[str, Any], flops_from: dict[str, Any]) -> float:
        return (flops_from["train_flops"] / (worker["step_ms"] / 1e3)
                / (worker["matmul_peak_gflops"] * 1e9))

    out["mfu"] = {"hrf_jax": spread([mfu(o, o) for o in ours]),
                  "reference_at_hrf_jax_flops": spread([mfu(r, o) for r, o in pairs])}
    return out


def side_by_side(ref_dir: str, python: str, *, pairs: int, frames: int, batch: int,
                 repeats: int, latency_repeats: int, device: str, timeout: float,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Check the reference, then ``pairs`` alternating reference / hrf_jax processes."""
    if frames <= MIN_FRAMES:
        raise ReferenceSetupError(
            f"--reference-frames must exceed {MIN_FRAMES}: the official model squeezes its last "
            "stage's token axis, which fails when that stage has a single token")
    torch_version = check_reference(ref_dir, python)
    cmds = commands(ref_dir, python, frames=frames, batch=batch, repeats=repeats,
                    latency_repeats=latency_repeats, device=device)
    env = worker_env(device)
    result: dict[str, Any] = {
        "machine": host(), "command": " ".join(sys.argv), "device": device,
        "frames": frames, "batch": batch, "repeats": repeats,
        "latency_repeats": latency_repeats, "reference_python": python,
        "reference_torch": torch_version, "workers": cmds, "reference": [], "hrf_jax": []}
    for i in range(pairs):
        for side in SIDES:
            result[side].append(run_worker(cmds[side], env, timeout))
            log(f"pair {i + 1}/{pairs} {side}: {json.dumps(result[side][-1])}")
    result["load_avg_at_end"] = os.getloadavg()
    result["summary"] = summarize(result["reference"], result["hrf_jax"])
    return result
