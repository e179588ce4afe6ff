"""The notebooks run top to bottom under ``HRF_JAX_TINY=1`` (tiny corpus, 1-2 epochs),
each via ``pytest --nbmake`` in a subprocess, and are committed without outputs.

The runs a notebook trains are handed over already trained (the shared runs of the test
session, same settings) in ``HRF_JAX_TINY_RUNS``: its ``fit`` calls then resume finished runs
and only evaluate, and every other cell (merge, surgery, export, plots) runs as written."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BUDGET_S = 180  # each notebook, tiny settings
CELL_TIMEOUT_S = 600  # a generous hard stop per cell on a loaded machine
# notebook -> {its run folder under WORKDIR: (backbone, variant) of the shared run}
HANDED_OVER = {
    "01_quickstart": {"light_hrf": ("conformer", "light_hrf")},
    "02_parameter_surgery": {"light_plain": ("conformer", "light")},
    "03_paper_protocol": {f"fold-1/{name}": ("conformer", variant) for name, variant in
                          (("light", "light"), ("light_HRFx4", "light_hrf"),
                           ("large", "large"))},
}


def test_the_three_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == [
        "01_quickstart.ipynb", "02_parameter_surgery.ipynb", "03_paper_protocol.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs: strip them"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has a count"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_tiny_settings(path, tiny_data_dir, trained_run, tmp_path):
    for folder, shared in HANDED_OVER[path.stem].items():
        shutil.copytree(trained_run(*shared), tmp_path / folder)
    env = {**os.environ, "HRF_JAX_TINY": "1", "HRF_JAX_TINY_DATA": str(tiny_data_dir),
           "HRF_JAX_TINY_RUNS": str(tmp_path), "MPLBACKEND": "Agg",
           "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbmake", f"--nbmake-timeout={CELL_TIMEOUT_S}",
         "-q", "-p", "no:cacheprovider", str(path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3 * CELL_TIMEOUT_S)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, (
        f"{path.name} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}")
    print(f"{path.name}: {seconds:.0f} s (budget {BUDGET_S} s on an idle 2-core machine)")
