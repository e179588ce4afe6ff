"""The hrf-jax CLI end to end on a tiny synthetic corpus: prepare, train, eval, merge,
predict and the demo with tiny settings."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from hrf_jax.cli import main
from hrf_jax.data.synthetic import SyntheticConfig, synthesize
from tests.conftest import TINY_CORPUS, tiny_overrides

SUBCOMMANDS = ("demo", "prepare", "train", "eval", "merge", "predict", "export", "bench")


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command):
    proc = subprocess.run([sys.executable, "-m", "hrf_jax.cli", command, "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: hrf-jax" in proc.stdout


def test_train_eval_merge_predict(tiny_data_dir, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main(["train", "--workdir", str(workdir),
                 *tiny_overrides(tiny_data_dir, **{"model.hrf_ratio": 4})]) == 0
    final = json.loads((workdir / "final.json").read_text())
    assert 0.0 <= final["test"]["wa"] <= 1.0
    assert final["selected"]["epoch"] in (1, 2)
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 2

    assert main(["eval", "--workdir", str(workdir), "--plots"]) == 0
    out = capsys.readouterr().out
    assert '"ua"' in out
    assert (workdir / "plots" / "confusion_test.png").stat().st_size > 1000
    assert (workdir / "plots" / "learning_curves.png").stat().st_size > 1000

    assert main(["merge", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "HRF layers" in out
    deploy = json.loads((workdir / "deploy" / "deploy.json").read_text())
    assert deploy["equivalence"]["structure_match"]
    assert deploy["equivalence"]["max_rel_err"] <= 1e-5
    assert deploy["params"] == deploy["equivalence"]["params_plain"]
    assert deploy["config"]["model"]["hrf_ratio"] == 0

    wave, _, _ = synthesize(SyntheticConfig(), 0)
    wav = tmp_path / "utt.wav"
    sf.write(wav, wave, 16000)
    assert main(["predict", str(wav), "--workdir", str(workdir)]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["label"] in row["probs"]
    assert sum(row["probs"].values()) == pytest.approx(1.0, abs=1e-5)


def test_unknown_override_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "--workdir", str(tmp_path / "x"), "--config.train.epoks=3"])
    assert code == 2
    assert "unknown config field 'train.epoks'" in capsys.readouterr().err


def test_workdir_of_another_model_is_refused(tiny_data_dir, tmp_path, capsys):
    workdir = tmp_path / "run"
    (workdir).mkdir()
    from hrf_jax.config import default_config

    other = default_config()
    other.model.backbone = "speechformer"
    (workdir / "config.json").write_text(other.to_json())
    code = main(["train", "--workdir", str(workdir), *tiny_overrides(tiny_data_dir)])
    assert code == 2
    assert "holds a run with a different" in capsys.readouterr().err


def test_demo_with_tiny_settings(tiny_data_dir, tmp_path):
    workdir = tmp_path / "demo"
    code = main(["demo", "--workdir", str(workdir), "--epochs", "1", "--batch-size", "8",
                 "--num-utterances", str(TINY_CORPUS["num_utterances"]),
                 "--num-speakers", str(TINY_CORPUS["num_speakers"]),
                 "--max-frames", "100", "--data-dir", str(tiny_data_dir), "--no-progress"])
    assert code == 0
    results = json.loads((workdir / "results.json").read_text())
    assert set(results) >= {"dataset", "backbone", "models", "merge"}
    assert set(results["models"]) == {"light", "light_hrf", "light_hrf_merged", "large"}
    for row in results["models"].values():
        assert set(row) == {"wa", "ua", "macro_f1", "params", "flops", "latency_ms"}
        assert 0.0 <= row["wa"] <= 1.0 and 0.0 <= row["ua"] <= 1.0
    models = results["models"]
    assert models["light_hrf_merged"]["params"] == models["light"]["params"]
    assert models["light_hrf"]["params"] > models["light"]["params"]
    assert models["large"]["params"] > 10 * models["light"]["params"]
    # deHRF: the merged model predicts exactly what the HRF model predicts
    assert results["merge"]["predictions_identical"] == 1.0
    assert results["merge"]["max_abs_err"] < 1e-4
    assert models["light_hrf_merged"]["wa"] == models["light_hrf"]["wa"]
    assert np.isfinite(models["light_hrf_merged"]["flops"])
