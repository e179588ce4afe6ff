"""Shared fixtures: one tiny synthetic corpus and one tiny trained run per (backbone, variant),
built once per test session and shared by every xdist worker (a file lock guards each).

Compiled XLA programs are kept in a persistent cache shared by the workers and by the
subprocesses the tests start (CLI runs, notebooks), so a program is compiled once per machine.
"""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# one cache per jax version: entries of another jaxlib crashed a resumed run (make test-min)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(
    Path(tempfile.gettempdir())
    / f"hrf_jax_tests_xla_{os.getuid()}_jax{importlib.metadata.version('jaxlib')}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

TINY_CORPUS = {"num_utterances": 96, "num_speakers": 8}
TINY_TRAIN = {"train.batch_size": 8, "train.eval_batch_size": 8, "train.max_frames": 100,
              "train.epochs": 2, "train.progress": False}
# variant -> (size, HRF ratio) of the shared trained runs
VARIANTS = {"light": ("light", 0), "light_hrf": ("light", 4), "large": ("large", 0)}
SAVE_EVERY = 3  # the shared runs also checkpoint mid-epoch, for the resume tests


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory, worker_id) -> Path:
    """A folder every xdist worker of this session sees (the parent of their temp roots)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if worker_id != "master" else base) / "shared"
    root.mkdir(exist_ok=True)
    return root


def _locked(path: Path):
    from filelock import FileLock

    return FileLock(str(path) + ".lock")


@pytest.fixture(scope="session")
def tiny_data_dir(shared_root) -> Path:
    from hrf_jax.data import ensure_prepared

    data_dir = shared_root / "data"
    with _locked(data_dir):
        ensure_prepared("synthetic", data_dir, workers=1, **TINY_CORPUS)
    return data_dir


@pytest.fixture(scope="session")
def tiny_corpus() -> dict:
    """The synthetic options ``tiny_data_dir`` was prepared with (for ``load_dataset``)."""
    return dict(TINY_CORPUS)


@pytest.fixture(scope="session")
def tiny_overrides():
    """``tiny_overrides(data_dir, **extra)``: ``--config.a.b=v`` for a run of seconds."""

    def make(data_dir, **extra) -> list[str]:
        values = {"dataset.data_dir": str(data_dir),
                  "dataset.num_utterances": TINY_CORPUS["num_utterances"],
                  "dataset.num_speakers": TINY_CORPUS["num_speakers"], **TINY_TRAIN, **extra}
        return [f"--config.{k}={v}" for k, v in values.items()]

    return make


@pytest.fixture(scope="session")
def run_overrides(tiny_data_dir, tiny_overrides):
    """``run_overrides(backbone, variant, **extra)``: the ``hrf-jax train`` overrides of a
    shared run (``extra`` changes some)."""

    from hrf_jax.config import LARGE_MODEL_OPTIMIZER

    def make(backbone: str = "conformer", variant: str = "light_hrf", **extra) -> list[str]:
        size, ratio = VARIANTS[variant]
        # large with the large models' optimizer, as the demo, the grids and the notebook
        optimizer = {f"optimizer.{k}": v for k, v in LARGE_MODEL_OPTIMIZER.items()
                     } if size == "large" else {}
        return tiny_overrides(tiny_data_dir, **{
            "model.backbone": backbone, "model.size": size, "model.hrf_ratio": ratio,
            "train.save_every_steps": SAVE_EVERY, "train.keep_last": 3, **optimizer, **extra})

    return make


@pytest.fixture(scope="session")
def trained_run(shared_root, run_overrides):
    """``trained_run(backbone="conformer", variant="light_hrf") -> Path``: a tiny run trained
    with ``hrf-jax train`` (2 epochs, see ``VARIANTS``) and merged with ``hrf-jax merge``, each
    in a process of its own (as a user runs them; no test's global JAX settings reach it).
    Shared by every test: copy it (``private_run``) before changing anything in it."""
    from hrf_jax.run import DEPLOY_DIR, DEPLOY_INFO

    def get(backbone: str = "conformer", variant: str = "light_hrf") -> Path:
        path = shared_root / "runs" / f"{backbone}_{variant}"
        with _locked(path):
            if not (path / DEPLOY_DIR / DEPLOY_INFO).is_file():  # else: finished and merged
                hrf_jax_cli("train", "--workdir", str(path), *run_overrides(backbone, variant))
                hrf_jax_cli("merge", "--workdir", str(path))
        return path

    return get


def hrf_jax_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs ``python -m hrf_jax ARGS`` in a subprocess; fails the test with its output."""
    proc = subprocess.run([sys.executable, "-m", "hrf_jax", *args], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode:
        pytest.fail(f"hrf-jax {' '.join(args)} exited {proc.returncode}:\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def copy_run(source: Path, target: Path) -> Path:
    """A private copy of a shared run folder."""
    shutil.copytree(source, target)
    return target


@pytest.fixture
def private_run(trained_run, tmp_path):
    """``private_run(backbone, variant, name=...)``: a copy of a shared run this test may change."""

    def get(backbone: str = "conformer", variant: str = "light_hrf", name: str = "run") -> Path:
        return copy_run(trained_run(backbone, variant), tmp_path / name)

    return get
