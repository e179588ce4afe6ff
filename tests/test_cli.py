"""The hrf-jax CLI end to end on the shared tiny runs: help, train, eval, merge, predict,
clear errors, and the demo."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from hrf_jax.cli import SUBCOMMANDS, main
from hrf_jax.data.synthetic import SyntheticConfig, synthesize


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert f"usage: hrf-jax {command}" in capsys.readouterr().out


def test_help_and_version_import_no_jax():
    code = ("import sys\n"
            "from hrf_jax.cli import SUBCOMMANDS, build_parser\n"
            "parser = build_parser()\n"
            "for argv in (['--help'], ['--version'], *([c, '--help'] for c in SUBCOMMANDS)):\n"
            "    try:\n"
            "        parser.parse_args(argv)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "print('heavy:', [m for m in ('jax', 'flax', 'tensorflow', 'tensorflow_datasets',"
            " 'grain') if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "heavy: []" in proc.stdout
    assert "hrf-jax 0." in proc.stdout


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "hrf_jax", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("hrf-jax "), proc.stderr


def test_train_writes_run_files_and_merge_the_deploy_folder(trained_run):
    workdir = trained_run("conformer", "light_hrf")
    final = json.loads((workdir / "final.json").read_text())
    assert 0.0 <= final["test"]["wa"] <= 1.0
    assert final["selected"]["epoch"] in (1, 2)
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 2
    deploy = json.loads((workdir / "deploy" / "deploy.json").read_text())
    assert deploy["equivalence"]["structure_match"]
    assert deploy["equivalence"]["hrf_layers"] > 0
    assert deploy["equivalence"]["max_rel_err"] <= 1e-5
    assert deploy["params"] == deploy["equivalence"]["params_plain"]
    assert deploy["config"]["model"]["hrf_ratio"] == 0


def test_train_on_a_finished_run_only_reports(private_run, run_overrides, capsys):
    workdir = private_run("conformer", "light_hrf")
    before = (workdir / "metrics.jsonl").read_text()
    assert main(["train", "--workdir", str(workdir), *run_overrides()]) == 0
    out = capsys.readouterr().out
    assert "has finished its 2 epochs" in out and "test (checkpoint of epoch" in out
    assert (workdir / "metrics.jsonl").read_text() == before  # no epoch trained again


def test_merge_prints_the_equivalence_report(private_run, capsys):
    workdir = private_run("conformer", "light_hrf")
    shutil.rmtree(workdir / "deploy")
    assert main(["merge", "--workdir", str(workdir), "--out", str(workdir / "elsewhere")]) == 0
    out = capsys.readouterr().out
    assert "HRF layers" in out and "max |logit diff|" in out
    assert (workdir / "elsewhere" / "deploy.json").is_file()


def test_eval_prints_metrics_and_writes_plots(private_run, capsys):
    workdir = private_run("conformer", "light_hrf")
    assert main(["eval", "--workdir", str(workdir), "--plots"]) == 0
    out = capsys.readouterr().out
    assert '"ua"' in out
    assert (workdir / "plots" / "confusion_test.png").stat().st_size > 1000
    assert (workdir / "plots" / "learning_curves.png").stat().st_size > 1000


def test_predict_with_the_deploy_folder(trained_run, tmp_path, capsys):
    workdir = trained_run("conformer", "light_hrf")
    wave, _, _ = synthesize(SyntheticConfig(), 0)
    wav = tmp_path / "utt.wav"
    sf.write(wav, wave, 16000)
    for where in (["--workdir", str(workdir)], ["--checkpoint", str(workdir / "deploy")]):
        assert main(["predict", str(wav), *where]) == 0
        row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert row["label"] in row["probs"]
        assert sum(row["probs"].values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_without_a_deploy_folder_says_what_to_run(tmp_path, capsys):
    assert main(["predict", "x.wav", "--workdir", str(tmp_path)]) == 2
    assert "hrf-jax merge" in capsys.readouterr().err


def test_unknown_override_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "--workdir", str(tmp_path / "x"), "--config.train.epoks=3"])
    assert code == 2
    assert "unknown config field 'train.epoks'" in capsys.readouterr().err


def test_unrecognised_argument_of_another_subcommand_is_refused(capsys):
    with pytest.raises(SystemExit) as done:
        main(["eval", "--workdir", "x", "--config.train.epochs=3"])
    assert done.value.code == 2
    assert "unrecognised arguments" in capsys.readouterr().err


def test_workdir_of_another_model_is_refused(run_overrides, tmp_path, capsys):
    from hrf_jax.config import apply_overrides, default_config

    other = default_config()
    apply_overrides(other, run_overrides(**{"model.backbone": "speechformer"}))
    (tmp_path / "config.json").write_text(other.to_json())
    code = main(["train", "--workdir", str(tmp_path), *run_overrides()])
    assert code == 2
    assert "holds a run with a different model config" in capsys.readouterr().err


def test_demo_with_tiny_settings(trained_run, tiny_data_dir, tmp_path):
    # The demo's three trainings are the shared runs (same recipe and seed): handed over
    # finished, `fit` reports them without training, and the demo merges and evaluates.
    workdir = tmp_path / "demo"
    for name in ("light", "light_hrf", "large"):
        shutil.copytree(trained_run("conformer", name), workdir / name)
        shutil.rmtree(workdir / name / "deploy")
    code = main(["demo", "--workdir", str(workdir), "--epochs", "2", "--batch-size", "8",
                 "--num-utterances", "96", "--num-speakers", "8", "--max-frames", "100",
                 "--data-dir", str(tiny_data_dir), "--no-progress"])
    assert code == 0
    results = json.loads((workdir / "results.json").read_text())
    assert set(results) >= {"dataset", "backbone", "models", "merge"}
    assert set(results["models"]) == {"light", "light_hrf", "light_hrf_merged", "large"}
    for row in results["models"].values():
        assert set(row) == {"wa", "ua", "ua_ci95", "macro_f1", "params", "flops", "latency_ms"}
        assert 0.0 <= row["wa"] <= 1.0 and 0.0 <= row["ua"] <= 1.0
        low, high = row["ua_ci95"]
        assert 0.0 <= low <= high <= 1.0
    models = results["models"]
    assert models["light_hrf_merged"]["params"] == models["light"]["params"]
    assert models["light_hrf"]["params"] > models["light"]["params"]
    assert models["large"]["params"] > 10 * models["light"]["params"]
    # deHRF: the merged model predicts exactly what the HRF model predicts
    assert results["merge"]["predictions_identical"] == 1.0
    assert results["merge"]["max_abs_err"] < 1e-4
    assert models["light_hrf_merged"]["wa"] == models["light_hrf"]["wa"]
    assert np.isfinite(models["light_hrf_merged"]["flops"])


def test_demo_runs_differ_in_size_ratio_and_the_large_models_optimizer():
    from hrf_jax.config import LARGE_MODEL_OPTIMIZER
    from hrf_jax.demo import demo_config

    kwargs = dict(epochs=6, seed=0, num_utterances=960, num_speakers=0, batch_size=32,
                  max_frames=160, data_dir="", progress=False)
    flat = lambda c: {f"{s}.{k}": v for s, fields in c.to_dict().items()
                      for k, v in fields.items()}
    light = flat(demo_config("conformer", "light", 0, **kwargs))
    hrf = flat(demo_config("conformer", "light", 4, **kwargs))
    large = flat(demo_config("conformer", "large", 0, **kwargs))
    assert {k for k in light if light[k] != hrf[k]} == {"model.hrf_ratio"}
    assert {k: large[k] for k in light if light[k] != large[k]} == {
        "model.size": "large", **{f"optimizer.{k}": v for k, v in LARGE_MODEL_OPTIMIZER.items()}}
