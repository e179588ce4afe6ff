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
    # the baselines' per-model needs (grids.BASELINE_RECIPES): large models get a lower peak
    # lr and longer warm-up, the ConvTransformer large runs pre-LN
    synthetic = get_grid("synthetic_all")
    ct = run_config(synthetic, "convtransformer", "large", -1, 0)
    assert (ct.model.arch, ct.optimizer.lr, ct.optimizer.warmup_fraction) == (
        "pre_ln=True", 3e-4, 0.1)
    assert run_config(synthetic, "conformer", "large", -1, 0).optimizer.lr == 3e-4
    sf = run_config(synthetic, "speechformer", "large", -1, 0)
    assert (sf.optimizer.lr, sf.train.epochs) == (3e-4, 3 * synthetic.base.train.epochs)
    light = run_config(synthetic, "convtransformer", "light", -1, 0)
    assert (light.model.arch, light.optimizer.lr) == ("pre_ln=True", 1e-3)  # both sizes


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


def test_headroom_grid_and_the_study_report_recomputes_from_its_per_seed_values(tmp_path,
                                                                                 monkeypatch):
    import numpy as np

    from experiments import hrf_study
    from experiments.stats import bootstrap_mean_ci

    grid = get_grid("synthetic_headroom_conformer")
    assert grid.base.dataset.name == "synthetic_headroom" and grid.backbones == ("conformer",)
    assert run_config(grid, "conformer", "medium", -1, 0).model.arch == "d_model=96"

    rng = np.random.default_rng(0)
    base = {"conformer": 0.50}
    shift = {"light": 0.0, "medium": 0.08, "light_hrf4": 0.01, "light_lr5": 0.012}
    cells = []
    for variant, delta in shift.items():
        for seed in range(6 if variant in ("light", "medium") else 10):
            ua = base["conformer"] + delta + 0.002 * seed + 0.01 * rng.random()
            cells.append({"backbone": "conformer", "variant": variant, "fold": -1,
                          "seed": seed, "test": {"ua": ua - 0.01}, "test_last": {"ua": ua}})
    cells.append({"backbone": "conformer", "variant": "large", "fold": -1, "seed": 0,
                  "test": {"ua": 0.4}, "test_last": {"ua": 0.4}})  # beside the gate
    for variant, delta in (("light", 0.0), ("light_hrf4", 0.02)):  # a later tier's backbone
        for seed in range(3):
            cells.append({"backbone": "speechformer", "variant": variant, "fold": -1,
                          "seed": seed, "test": {"ua": 0.4 + delta}, "test_last": {"ua": 0.4}})
    for variant, delta in (("light", 0.0), ("light_hrf4", -0.03)):  # the SGD recipe's tier
        for seed in range(4):
            cells.append({"backbone": "conformer", "variant": variant, "fold": -1,
                          "seed": seed, "recipe": "sgd", "test": {"ua": 0.3 + delta},
                          "test_last": {"ua": 0.3 + delta}})
    monkeypatch.setattr(hrf_study, "collect", lambda workdir, testbed: {
        "cells": cells, "machine": {"platform": "p", "jax": "j", "devices": ["cpu"]}})
    monkeypatch.setattr(hrf_study, "reference_classifiers", lambda workdir, testbed: {
        "probe": {"ua": 0.30}, "oracle": {"ua": 0.70}, "corpus_options": {}})
    study = hrf_study.report(tmp_path, tmp_path)
    on_disk = json.loads((tmp_path / "hrf_study.json").read_text())
    assert on_disk["gate"] == json.loads(json.dumps(study["gate"]))
    gate = study["gate"]
    # light and medium pair on seeds 0-5; the medium model is 8 points better in every seed
    assert gate["large_vs_light"]["seeds"] == list(range(6))
    assert gate["large_vs_light"]["pass"] and gate["light_vs_probe"]["pass"]
    assert gate["oracle_vs_large"]["pass"] and gate["passed"]
    assert gate["large_config_vs_light"]["seeds"] == [0] and "pass" not in gate[
        "large_config_vs_light"]
    hrf = study["contrasts"]["hrf4_vs_light"]
    assert hrf["seeds"] == list(range(6))  # only the seeds both variants ran
    assert np.isclose(hrf["mean"], np.mean(hrf["delta_ua"]), atol=1e-3)
    assert np.allclose(hrf["ci95"], bootstrap_mean_ci(hrf["primary"]["delta_ua"]), atol=1e-2)
    assert np.allclose(hrf["delta_ua"], np.subtract(hrf["primary"]["b_ua"],
                                                    hrf["primary"]["a_ua"]), atol=1e-3)
    assert study["contrasts"]["hrf4_vs_lr_control"]["seeds"] == list(range(10))
    assert "hrf4_fp_vs_light" not in study["contrasts"]  # no runs: no row
    later = study["contrasts"]["speechformer_hrf4_vs_light"]
    assert later["backbone"] == "speechformer" and later["secondary"]["mean"] == pytest.approx(2)
    assert "18 epochs" in later["recipe"] and "6 epochs" in hrf["recipe"]  # its 3x recipe
    assert "speechformer_lr_control_vs_light" not in study["contrasts"]
    assert hrf_study.overrides("headroom", "speechformer")[-1] == "--config.train.epochs=18"
    # a recipe's tier pairs only its own runs, and neither the gate nor the first tiers see them
    sgd = study["contrasts"]["sgd_hrf4_vs_light"]
    assert sgd["seeds"] == [0, 1, 2, 3] and sgd["mean"] == pytest.approx(-3)
    assert sgd["recipe"].startswith("SGD") and hrf["recipe"].startswith("AdamW")
    assert hrf["seeds"] == list(range(6)) and study["runs"]["sgd_light"] == [0, 1, 2, 3]
    sgd_overrides = hrf_study.overrides("headroom", recipe="sgd")
    assert {"--config.optimizer.name=sgd", "--config.train.epochs=18"} <= set(sgd_overrides)
    assert "18 epochs" in sgd["recipe"]
    assert "Gate passed: **True**" in (tmp_path / "hrf_study.md").read_text()
    # a second test bed writes its own files and names its corpus size
    hrf_study.report(tmp_path, tmp_path, "headroom_4x")
    bed_4x = json.loads((tmp_path / "hrf_study_4x.json").read_text())
    bed = bed_4x["testbed"]
    assert bed["name"] == "headroom_4x" and bed["overrides"]["dataset.num_utterances"] == 19200
    # that bed gates with the large config (trained on a GPU): one seed here, so it fails
    gate_4x = bed_4x["gate"]
    assert gate_4x["variant"] == "large" and gate_4x["large_vs_light"]["seeds"] == [0]
    assert not gate_4x["large_vs_light"]["pass"] and "large_config_vs_light" not in gate_4x
    assert gate_4x["oracle_vs_large"]["large_ua"] == pytest.approx(40)
    assert "| oracle (70.00) - large (40.00) |" in (tmp_path / "hrf_study_4x.md").read_text()


def test_baseline_checks_see_dead_heads_and_frames(trained_run, monkeypatch):
    from experiments import baselines
    from hrf_jax.run import Run

    # trained runs (light + HRF x4): the checks run; the Conformer's frames are not one vector
    sf = baselines.final_state_checks(trained_run("speechformer"))
    assert sf["utterances"] >= 1 and "frame_cosine" not in sf
    assert set(sf["dead_head_units"]) == {"head_0", "head_1"}
    conformer = baselines.final_state_checks(trained_run("conformer"))
    assert -1 <= conformer["frame_cosine"] < 0.999 and "dead_head_units" not in conformer

    # a head layer whose every pre-activation is negative is reported all dead
    variables = Run.variables

    def dead_second_layer(run, which="best"):
        v = variables(run, which)
        head = v["params"]["head_1"]
        v["params"]["head_1"] = {**head, "bias": head["bias"] - 1e4}
        return v

    monkeypatch.setattr(Run, "variables", dead_second_layer)
    sf = baselines.final_state_checks(trained_run("speechformer"))
    width = sf["dead_head_units"]["head_1"].split("/")[1]
    assert sf["dead_head_units"]["head_1"] == f"{width}/{width}"


def test_a_finished_run_of_another_test_bed_is_refused_not_read(tmp_path):
    from experiments.run import run_grid
    from hrf_jax.run import CONFIG_FILE, FINAL

    grid = get_grid("synthetic_headroom_conformer")
    grid.variants, grid.seeds = ("light",), (0,)
    where = tmp_path / "synthetic_headroom" / "conformer" / "light" / "fold-1" / "seed0"
    where.mkdir(parents=True)
    (where / CONFIG_FILE).write_text(run_config(grid, "conformer", "light", -1, 0).to_json())
    metrics = {"wa": 0.5, "ua": 0.5, "macro_f1": 0.5, "weighted_f1": 0.5}
    (where / FINAL).write_text(json.dumps({"test": metrics, "validation": metrics,
                                           "history": [{"train_acc": 0.5}]}))
    assert len(run_grid(grid, tmp_path, collect_only=True)["cells"]) == 1
    bigger = ["--config.dataset.num_utterances=19200"]  # the 4x bed, same workdir
    with pytest.raises(ValueError, match="seed0 holds a run with a different dataset config"):
        run_grid(grid, tmp_path, bigger, collect_only=True)
    with pytest.raises(ValueError, match="seed0 holds a run with a different dataset config"):
        run_grid(grid, tmp_path, ["--config.dataset.difficulty=0.5"], collect_only=True)
    with pytest.raises(ValueError, match="seed0 holds a run with a different optimizer config"):
        run_grid(grid, tmp_path, ["--config.optimizer.name=sgd"], collect_only=True)
    # a run saved before a config field existed reads as that field's default
    saved = json.loads((where / CONFIG_FILE).read_text())
    del saved["dataset"]["difficulty"]
    (where / CONFIG_FILE).write_text(json.dumps(saved))
    assert len(run_grid(grid, tmp_path, collect_only=True)["cells"]) == 1


def test_cue_ladder_starts_at_the_gates_oracle_and_loses_the_cues_it_is_not_given():
    from experiments.cue_ladder import bed_config, markdown
    from experiments.testbed import LADDER, cue_ladder
    from hrf_jax.data.synthetic import SyntheticConfig

    lexical = bed_config("headroom_lexical")
    assert (lexical.num_utterances, lexical.num_speakers, lexical.lexicon) == (19200, 96, 40)
    assert bed_config("headroom").num_utterances == 4800
    cfg = SyntheticConfig(num_utterances=1200, num_speakers=24, preset="headroom",
                          min_seconds=1.2, max_seconds=2.8)
    rungs = cue_ladder(cfg)
    assert list(rungs) == [name for name, _ in LADDER]
    ua = {k: v["ua"] for k, v in rungs.items()}
    # the drawn parameters separate the six classes; without the F0 contour much less so
    assert ua["latents"] > 0.7 and ua["no_f0"] < ua["realized"] - 0.05, ua
    report = {"command": "c", "commit": "x", "date": "d", "rungs": dict(LADDER),
              "beds": {"b": {"ladder_ua": {k: 100 * v for k, v in ua.items()},
                             "networks_ua": {"light": 50.0, "seeds": {"light": 3}}}}}
    text = markdown(report)
    assert f"| latents | {LADDER[0][1]} | {100 * ua['latents']:.1f} |" in text
    assert "| light (network) | Conformer, the bed's recipe | 50.0 (3 seeds) |" in text
