"""Huge pages for XLA's per-step buffers: the commands restart themselves with glibc's
``glibc.malloc.hugetlb=1`` tunable where that helps.

XLA:CPU allocates each execution's buffers afresh, and glibc hands the large ones out as new
``mmap`` regions, so every training step first-touches tens of megabytes page by page. On
the 2-core KVM guests of BENCHMARKS.md a 4 KiB page fault costs several microseconds: a fresh
67 MB copy takes 90-150 ms against 18 ms into a reused buffer. With the tunable, glibc asks
the kernel for transparent huge pages (``madvise`` mode), 512x fewer faults: the Conformer
light train step (T=160) went from 144 to 99 ms (BENCHMARKS.md). Results are bit-identical;
only allocation changes.

Tunables are read when a process starts, so ``exec_with_hugepages`` re-executes the current
command line with the variable added (one more interpreter start). It does nothing off Linux,
without glibc >= 2.35, when transparent huge pages are ``never``, when the tunable is already
set, or when ``HRF_JAX_NO_HUGEPAGES=1``. In a notebook or your own script, start Python with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` in its environment instead.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "HRF_JAX_NO_HUGEPAGES"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MIN_GLIBC = (2, 35)  # the first glibc with glibc.malloc.hugetlb


def thp_mode(path: Path = THP_MODE) -> str:
    """The kernel's transparent-huge-page mode (``always``, ``madvise`` or ``never``); ``""``
    where the file is missing (not Linux, or a kernel without THP)."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else ""


def glibc_version() -> tuple[int, ...]:
    """This process's glibc version, ``()`` under another C library."""
    name, version = platform.libc_ver()
    if name != "glibc":
        return ()
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return ()


def hugepage_environ(environ: Mapping[str, str], *, mode: str, glibc: tuple[int, ...]
                     ) -> dict[str, str] | None:
    """The environment to restart with, or ``None`` when a restart would change nothing."""
    if environ.get(OPT_OUT, "") not in ("", "0"):
        return None
    if glibc < MIN_GLIBC or mode not in ("always", "madvise"):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def exec_with_hugepages() -> None:
    """Replaces this process by the same command line with the tunable set, where it applies.

    Call it first thing in a program's entry point, never from library code or a test: the
    process is replaced and does not return here.
    """
    if sys.platform != "linux":
        return
    env = hugepage_environ(os.environ, mode=thp_mode(), glibc=glibc_version())
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
