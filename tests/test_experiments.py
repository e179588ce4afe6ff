"""The experiment runner: a tiny grid trains every missing cell once, reads finished ones,
resumes, and writes its table."""

import json
import shutil

import pytest

from experiments.grids import get_grid, run_config
from experiments.run import main


def test_grid_names_and_cells():
    grid = get_grid("iemocap_conformer")
    assert grid.folds == (0, 1, 2, 3, 4) and grid.base.dataset.protocol == "loso"
    config = run_config(grid, "conformer", "light_hrf4", 2, 1)
    assert (config.model.hrf_ratio, config.dataset.fold, config.train.seed) == (4, 2, 1)
    assert get_grid("daic_woz_speechformer").base.dataset.name == "daic_woz"
    assert get_grid("synthetic_all").backbones == ("conformer", "speechformer", "convtransformer")
    with pytest.raises(ValueError, match="unknown dataset"):
        get_grid("emodb_conformer")


def test_tiny_grid_runs_resumes_and_writes_results(tiny_data_dir, tiny_overrides, trained_run,
                                                     tmp_path, capsys):
    # Seed 1's cells are handed over finished (the shared runs): the runner must read them,
    # not train them; seed 0's cells it trains.
    runs = tmp_path / "runs"
    for variant, shared in (("light", "light"), ("light_hrf4", "light_hrf")):
        shutil.copytree(trained_run("conformer", shared),
                        runs / "synthetic" / "conformer" / variant / "fold-1" / "seed1")
    args = ["synthetic_conformer", "--workdir", str(runs), "--seeds", "0", "1",
            "--variants", "light", "light_hrf4", "--data-dir", str(tiny_data_dir),
            "--results-dir", str(tmp_path / "results"),
            *[o for o in tiny_overrides(tiny_data_dir, **{"train.epochs": 1})
              if "data_dir" not in o]]
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "light fold -1 seed 0" in out and "light_hrf4 fold -1 seed 0" in out
    assert "seed 1 ->" not in out
    result = json.loads((tmp_path / "results" / "synthetic_conformer.json").read_text())
    assert [r["variant"] for r in result["rows"]] == ["light", "light_hrf4"]
    assert all(r["runs"] == 2 for r in result["rows"])
    assert len(result["cells"]) == 4
    assert result["cells"][0]["seconds"] is not None
    table = (tmp_path / "results" / "synthetic_conformer.md").read_text()
    assert "light + HRF x4" in table and "±" in table
    assert main(args) == 0  # every cell finished: nothing is trained again
    assert "==" not in capsys.readouterr().out
