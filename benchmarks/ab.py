"""What the A/B benchmarks share: a git revision's copies of model files loaded as modules,
and the per-side summary (median and range) and run metadata of their JSON."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_baseline_modules(rev: str, files: Mapping[str, str], folder: pathlib.Path
                          ) -> dict[str, ModuleType]:
    """``{name: module}`` of ``rev``'s copies of ``files`` (name -> repository path), loaded in
    order as ``_baseline_<name>``; an ``from hrf_jax.<name> import`` of an earlier name is
    rewired to its baseline copy, so the copies use each other, not the working tree."""
    modules = {}
    for name, file in files.items():
        src = subprocess.run(["git", "show", f"{rev}:{file}"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
        for dep in modules:
            src = src.replace(f"from hrf_jax.{dep} import", f"from _baseline_{dep} import")
        path = folder / f"_baseline_{name}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(f"_baseline_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        modules[name] = module
    return modules


def summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """Median, min and max in milliseconds and the number of timings."""
    ms = np.asarray(seconds) * 1e3
    return {"median_ms": float(np.median(ms)), "min_ms": float(ms.min()),
            "max_ms": float(ms.max()), "n": int(ms.size)}


def ms_range(summary: Mapping[str, Any], digits: int = 2) -> str:
    """A ``summary_ms`` as ``median (min-max)`` for the printed tables."""
    return (f"{summary['median_ms']:.{digits}f} ({summary['min_ms']:.{digits}f}-"
            f"{summary['max_ms']:.{digits}f})")


def timed(fn: Any, n: int) -> list[float]:
    """Seconds of ``n`` calls of ``fn`` (which blocks until its result is ready)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run_meta(load_start: Sequence[float]) -> dict[str, Any]:
    """Date, machine, jax version, the fp32 matmul peak now and the load averages at the
    start and now. The peak is kept because the same machine kind has measured twice the
    usual one on some days (BENCHMARKS.md, "Side by side"): runs of different days compare
    only where it agrees."""
    import jax

    from hrf_jax.bench.machine import matmul_peak_gflops

    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "jax": jax.__version__, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "matmul_peak_gflops": matmul_peak_gflops(),
            "loadavg_start": tuple(load_start),
            "loadavg_end": os.getloadavg()}
