"""Run configuration: overrides are parsed and type-checked, string fields with a fixed set
of values are validated (overrides, loaded files, ``hrf-jax train``) before anything runs."""

import json
import subprocess
import sys

import pytest

from hrf_jax.cli import main
from hrf_jax.config import apply_overrides, choices, default_config, load_config, validate

CHOICES = choices()


def _bad_override(field: str) -> str:
    """An override setting ``field`` (or one item of a tuple field) to a value outside its set."""
    raw = "('ffn', 'not_a_choice')" if isinstance(_get(field), tuple) else "not_a_choice"
    return f"--config.{field}={raw}"


def _get(field: str):
    node = default_config()
    for name in field.split("."):
        node = node[name]
    return node


def test_config_overrides_parse_and_check_types():
    config = default_config()
    apply_overrides(config, ["--config.optimizer.lr=3e-4", "config.model.hrf_ratio=8",
                             "--config.model.backbone=speechformer",
                             "--config.model.hrf_targets=('ffn','attn_in')"])
    assert config.optimizer.lr == 3e-4 and config.model.hrf_ratio == 8
    assert config.model.backbone == "speechformer"
    assert config.model.hrf_targets == ("ffn", "attn_in")
    with pytest.raises(ValueError, match="unknown config field 'model.hrf_rato'"):
        apply_overrides(config, ["--config.model.hrf_rato=2"])
    with pytest.raises(ValueError, match="expects int"):
        apply_overrides(config, ["--config.train.epochs=2.5"])


def test_synthetic_corpus_options_reach_preparation_only_when_set():
    from hrf_jax.run import dataset_options

    config = default_config()
    assert dataset_options(config.dataset) == {}  # the corpus's own defaults
    apply_overrides(config, ["--config.dataset.difficulty=0", "--config.dataset.num_speakers=12",
                             "--config.dataset.lexicon=40", "--config.dataset.flat=f0_st,rate"])
    # difficulty 0 (prototypical classes) is a value, not "unset"
    assert dataset_options(config.dataset) == {"difficulty": 0.0, "num_speakers": 12,
                                               "lexicon": 40, "flat": "f0_st,rate"}


def test_defaults_validate():
    validate(default_config())
    assert load_config().to_dict() == default_config().to_dict()


@pytest.mark.parametrize("field", sorted(CHOICES))
def test_a_value_outside_the_choices_is_refused_naming_field_value_and_choices(field):
    with pytest.raises(ValueError) as err:
        apply_overrides(default_config(), [_bad_override(field)])
    message = str(err.value)
    assert f"config.{field}" in message and "'not_a_choice'" in message
    assert all(value in message for value in CHOICES[field])


@pytest.mark.parametrize("field", sorted(CHOICES))
def test_every_listed_value_is_accepted(field):
    for value in CHOICES[field]:
        config = default_config()
        raw = f"('{value}',)" if isinstance(_get(field), tuple) else value
        apply_overrides(config, [f"--config.{field}={raw}"])


def test_the_choices_match_what_training_reads():
    assert CHOICES["train.compute_dtype"] == ("float32", "bfloat16")
    assert CHOICES["train.select_metric"] == ("wa", "ua", "macro_f1", "weighted_f1")
    assert set(CHOICES["dataset.name"]) >= {"synthetic", "iemocap", "csv"}


def test_a_loaded_json_config_is_validated(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"train": {"select_metric": "f1"}}))
    with pytest.raises(ValueError, match="config.train.select_metric: 'f1'"):
        load_config(str(path))


def test_train_with_a_bad_dtype_exits_2_before_training(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = main(["train", "--workdir", str(workdir), "--config.train.compute_dtype=bf16"])
    assert code == 2
    assert "config.train.compute_dtype: 'bf16'" in capsys.readouterr().err
    assert not workdir.exists()


def test_the_config_module_imports_without_jax():
    code = ("import sys, hrf_jax.config\n"
            "print('heavy:', [m for m in ('jax', 'flax') if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "heavy: []" in proc.stdout


def test_model_arch_replaces_size_fields_and_bad_text_is_refused():
    from hrf_jax.config import parse_arch
    from hrf_jax.run import model_from_config

    assert parse_arch("") == {}
    assert parse_arch("d_model=96, num_layers=4") == {"d_model": 96, "num_layers": 4}
    config = default_config()
    apply_overrides(config, ["--config.model.arch=d_model=96"])
    assert model_from_config(config.model, 4).cfg.d_model == 96
    for bad in ("d_model", "d_model=ninety", "9x=1"):
        with pytest.raises(ValueError, match="config.model.arch"):
            parse_arch(bad)
    config.model.arch = "d_model=96,depth=3"
    with pytest.raises(ValueError, match="depth"):
        model_from_config(config.model, 4)
