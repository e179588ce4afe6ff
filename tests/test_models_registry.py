"""Model registry: configs, sizes, HRF target validation and the README configs table."""

import functools
import subprocess
import sys
from pathlib import Path

import pytest

from hrf_jax import build_model
from hrf_jax.models import BACKBONES, SIZES, get_config, list_configs, supported_targets
from hrf_jax.models.table import HRF_RATIOS, forward_flops, parse
from hrf_jax.models.table import param_count as _param_count

README = Path(__file__).resolve().parents[1] / "README.md"
param_count = functools.cache(_param_count)  # each config is traced once for all tests


def test_every_backbone_has_every_size():
    assert BACKBONES == ("conformer", "speechformer", "convtransformer")
    assert SIZES == ("light", "large")
    assert sorted(list_configs()) == sorted((b, s) for b in BACKBONES for s in SIZES)


def test_backbone_names_load_without_jax():
    code = ("import sys, hrf_jax.models as m; "
            "assert m.BACKBONES and m.SIZES; "
            "assert 'jax' not in sys.modules and 'flax' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_readme_table_parameter_counts_match_the_models():
    rows = {(r["backbone"], r["size"]): r for r in parse(README.read_text())}
    assert set(rows) == set(list_configs())
    for (backbone, size), row in rows.items():
        assert int(row["params"].replace(",", "")) == param_count(backbone, size)
        for r in HRF_RATIOS:
            cell = row[f"params HRF x{r}"].replace(",", "")
            assert int(cell) == param_count(backbone, size, r), (backbone, size, r)


def test_readme_table_flops_match_the_light_models():
    # XLA's count follows the compiled program, so a change of an inference form (im2col,
    # local attention) changes it: the table must be rewritten with such a change
    rows = {(r["backbone"], r["size"]): r for r in parse(README.read_text())}
    for backbone in BACKBONES:
        cell = float(rows[(backbone, "light")]["MFLOPs (3 s)"].replace(",", ""))
        assert cell == round(forward_flops(backbone, "light") / 1e6, 1), backbone


@pytest.mark.parametrize("backbone", BACKBONES)
def test_light_is_lightweight_and_large_is_ten_times_bigger(backbone):
    light, large = param_count(backbone, "light"), param_count(backbone, "large")
    assert 100_000 <= light <= 500_000
    assert large >= 10 * light


def test_large_conformer_is_conformer_s():
    cfg = get_config("conformer", "large")
    assert (cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.kernel_size) == (144, 16, 4, 31)


def test_unknown_hrf_target_raises():
    with pytest.raises(ValueError, match="unknown hrf_targets"):
        build_model("conformer", num_classes=4, hrf_ratio=2, hrf_targets=("ffn", "qkv"))


def test_target_absent_from_backbone_raises():
    assert "merge" not in supported_targets("conformer")
    with pytest.raises(ValueError, match="do not exist in conformer"):
        build_model("conformer", num_classes=4, hrf_ratio=2, hrf_targets=("merge",))


def test_unknown_override_and_size_raise():
    with pytest.raises(ValueError, match="unknown override"):
        build_model("speechformer", num_classes=4, n_layers=3)
    with pytest.raises(ValueError, match="unknown size"):
        build_model("speechformer", "huge", num_classes=4)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model("lstm", num_classes=4)


def test_overrides_reach_config_and_hrf_layers():
    model = build_model(
        "convtransformer", num_classes=3, hrf_ratio=2, hrf_depth=2, hrf_base="out", dropout=0.3
    )
    assert model.cfg.dropout == 0.3
    assert (model.hrf.depth, model.hrf.base, model.hrf.ratio) == (2, "out", 2)
    # depth 2, base "out": fc1 (64 -> 512) gets 64 -> 1024 -> 1024, then 1024 -> 512
    plain = param_count("convtransformer", "light")
    extra = (64 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 - 64) * 512
    assert param_count("convtransformer", "light", 2, hrf_depth=2, hrf_base="out") == (
        plain + 4 * extra
    )
