"""The machine a benchmark ran on: its description and its fp32 matmul throughput in JAX."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 ``n^3`` matmul throughput of this machine in jax, GFLOP/s (median)."""
    import jax
    import jax.numpy as jnp

    from hrf_jax.profiling import median_latency_ms

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    return 2 * n**3 / (median_latency_ms(f, a, a, repeats=repeats, warmup=2) / 1e3) / 1e9


def host() -> dict[str, Any]:
    """CPU model, core count, Python version and load average now; imports no JAX (the
    side-by-side parent must not take the accelerator from its workers)."""
    cpu = platform.processor()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                    if ln.startswith("Model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "load_avg_at_start": os.getloadavg()}


def machine() -> dict[str, Any]:
    """``host()`` plus the jax version and devices."""
    import jax

    return {**host(), "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}
