"""Peak resident memory of the calling process, for the bench workers.

Standard library only: the reference worker imports it under a python without hrf_jax.
"""

from __future__ import annotations

import sys


def peak_rss_mb() -> float:
    """This process's own peak resident set size, MB: ``VmHWM`` from ``/proc/self/status``.

    ``ru_maxrss`` is only the fallback where ``/proc`` is absent: Linux carries it over exec
    from the parent, so a worker started by a large process would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    # bytes on macOS, kB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (
        2**20 if sys.platform == "darwin" else 1024)
