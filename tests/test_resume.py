"""A run killed with SIGKILL resumes from its last checkpoint and ends bit-identical; an
unreadable checkpoint is skipped with a message."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from hrf_jax.checkpoint import restore_state
from hrf_jax.run import Run

SAVE_EVERY = 3  # conftest.SAVE_EVERY: the shared runs checkpoint every 3 steps


def without_timings(path):
    summary = json.loads(Path(path).read_text())
    for record in summary["history"]:
        record.pop("seconds")
    return summary


def test_sigkill_then_resume_matches_uninterrupted(trained_run, run_overrides, tmp_path):
    reference = trained_run("conformer", "light_hrf")  # the same command, never interrupted
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "hrf_jax", "train", "--workdir", str(killed), *run_overrides()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    marker = killed / "checkpoints" / str(2 * SAVE_EVERY)  # a mid-epoch checkpoint
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final.json").exists()

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    last = [Run.load(w).variables("last") for w in (reference, killed)]
    for a, b in zip(*map(jax.tree_util.tree_leaves, last), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit-identical on CPU
    assert without_timings(killed / "final.json") == without_timings(reference / "final.json")


def test_truncated_checkpoint_is_skipped_with_a_message(private_run, capfd):
    workdir = private_run("conformer", "light_hrf")
    run = Run.load(workdir)
    steps = sorted(int(p.name) for p in run.last_dir.iterdir() if p.name.isdigit())
    newest = run.last_dir / str(steps[-1])
    for file in (newest / "state").rglob("*"):
        if file.is_file() and file.stat().st_size > 0:
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    state, meta = restore_state(run.last_dir, run.state_template())
    err = capfd.readouterr().err
    assert f"checkpoints/{steps[-1]} is unreadable" in err
    assert meta["step"] == steps[-2]
    assert int(state.step) == steps[-2]
