"""A run killed with SIGKILL resumes from its last checkpoint and ends bit-identical."""

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
from hrf_jax.config import load_config
from hrf_jax.deploy import load_run
from hrf_jax.loop import model_from_config
from hrf_jax.train import create_state, make_optimizer
from tests.conftest import tiny_overrides

SAVE_EVERY = 3


def train_cmd(workdir, data_dir):
    overrides = tiny_overrides(data_dir, **{"train.epochs": 3,
                                            "train.save_every_steps": SAVE_EVERY,
                                            "train.keep_last": 3,
                                            "model.hrf_ratio": 2})
    return [sys.executable, "-m", "hrf_jax.cli", "train", "--workdir", str(workdir), *overrides]


def final_params(workdir):
    _, _, _, variables = load_run(workdir, which="checkpoints")
    return jax.tree_util.tree_leaves(variables)


def without_timings(path):
    summary = json.loads(Path(path).read_text())
    for record in summary["history"]:
        record.pop("seconds")
    return summary


def test_sigkill_then_resume_matches_uninterrupted(tiny_data_dir, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(train_cmd(reference, tiny_data_dir), check=True, timeout=600,
                   capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(killed, tiny_data_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    marker = killed / "checkpoints" / str(2 * SAVE_EVERY)  # a mid-epoch checkpoint
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final.json").exists()

    resumed = subprocess.run(train_cmd(killed, tiny_data_dir), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    for a, b in zip(final_params(reference), final_params(killed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit-identical on CPU
    assert without_timings(killed / "final.json") == without_timings(reference / "final.json")


def test_truncated_checkpoint_is_skipped_with_a_message(tiny_data_dir, tmp_path, capfd):
    workdir = tmp_path / "run"
    subprocess.run(train_cmd(workdir, tiny_data_dir), check=True, timeout=600,
                   capture_output=True)
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    newest = workdir / "checkpoints" / str(steps[-1])
    for file in (newest / "state").rglob("*"):
        if file.is_file() and file.stat().st_size > 0:
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    config = load_config(str(workdir / "config.json"))
    model = model_from_config(config.model, 4)
    feats = np.zeros((1, 16, 128), np.float32)
    template = create_state(model, make_optimizer(config.optimizer, 10), jax.random.PRNGKey(0),
                            feats, np.ones((1, 16), bool))
    state, meta = restore_state(workdir / "checkpoints", template)
    err = capfd.readouterr().err
    assert f"checkpoints/{steps[-1]} is unreadable" in err
    assert meta["step"] == steps[-2]
    assert int(state.step) == steps[-2]
