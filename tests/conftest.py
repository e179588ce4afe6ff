"""Shared fixtures: one tiny synthetic corpus per test worker, prepared once."""

import pytest

TINY_CORPUS = {"num_utterances": 96, "num_speakers": 8}


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    from hrf_jax.data import ensure_prepared

    data_dir = tmp_path_factory.mktemp("data")
    ensure_prepared("synthetic", data_dir, **TINY_CORPUS)
    return data_dir


def tiny_overrides(data_dir, **extra):
    """``hrf-jax train`` overrides for a run of seconds on the tiny corpus."""
    values = {
        "dataset.data_dir": str(data_dir),
        "dataset.num_utterances": TINY_CORPUS["num_utterances"],
        "dataset.num_speakers": TINY_CORPUS["num_speakers"],
        "train.batch_size": 8,
        "train.eval_batch_size": 8,
        "train.max_frames": 100,
        "train.epochs": 2,
        "train.progress": False,
        **extra,
    }
    return [f"--config.{k}={v}" for k, v in values.items()]
