"""The commands' restart with glibc's huge-page tunable: when it applies, what it keeps."""

import os
import subprocess
import sys

import pytest

from hrf_jax.hugepages import MIN_GLIBC, OPT_OUT, TUNABLE, glibc_version, hugepage_environ, thp_mode

NEW_GLIBC = (2, 36)


@pytest.mark.parametrize("mode", ["always", "madvise"])
def test_adds_the_tunable_where_transparent_huge_pages_are_on(mode):
    env = hugepage_environ({"PATH": "/bin"}, mode=mode, glibc=NEW_GLIBC)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": TUNABLE}


def test_keeps_the_users_other_tunables():
    env = hugepage_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, mode="madvise",
                           glibc=NEW_GLIBC)
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}"


@pytest.mark.parametrize("environ, mode, glibc", [
    ({}, "never", NEW_GLIBC),  # the kernel would ignore the advice
    ({}, "", NEW_GLIBC),  # no THP at all
    ({}, "madvise", (2, 34)),  # glibc without the tunable
    ({}, "madvise", ()),  # not glibc
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", NEW_GLIBC),  # the user decided
    ({OPT_OUT: "1"}, "madvise", NEW_GLIBC),
])
def test_no_restart(environ, mode, glibc):
    assert hugepage_environ(environ, mode=mode, glibc=glibc) is None


def test_opt_out_zero_means_no_opt_out():
    assert hugepage_environ({OPT_OUT: "0"}, mode="madvise", glibc=NEW_GLIBC) is not None


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert thp_mode(path) == "madvise"
    assert thp_mode(tmp_path / "missing") == ""


def test_the_restarted_process_keeps_its_command_line():
    code = ("import os, sys; from hrf_jax.hugepages import exec_with_hugepages; "
            "exec_with_hugepages(); print(os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", code, "a", "b c"], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    applies = (sys.platform == "linux" and glibc_version() >= MIN_GLIBC
               and thp_mode() in ("always", "madvise"))
    assert out == f"{TUNABLE if applies else ''} ['a', 'b c']"


def test_the_module_entry_point_runs_through_the_restart():
    out = subprocess.run([sys.executable, "-m", "hrf_jax", "--version"], check=True,
                         capture_output=True, text=True).stdout
    assert out.startswith("hrf-jax ")
