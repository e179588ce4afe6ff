"""``hrf-jax bench``: its options, one tiny real run (JSON and table), and the
committed tables re-rendered from their JSON."""

import json
from pathlib import Path

import pytest

from hrf_jax.bench.report import render
from hrf_jax.cli import main

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
OPTIONS = ("--backbones", "--variants", "--frames", "--batch", "--latency-frames", "--scaling",
           "--scaling-frames", "--repeats", "--repeats-latency", "--repeats-paired", "--timeout",
           "--skip-large-train", "--exported", "--pipeline", "--quick", "--out",
           "--reference-speechformer", "--reference-python", "--reference-device",
           "--reference-frames", "--pairs")


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "usage: hrf-jax bench" in out
    assert all(option in out for option in OPTIONS)
    assert "conformer,speechformer,convtransformer" in out


def test_a_malformed_config_pair_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--scaling", "speechformer"])
    assert done.value.code == 2
    assert "'speechformer' is not backbone:variant" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_run_writes_every_measurement_and_prints_its_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--backbones", "convtransformer", "--variants", "light",
                 "--frames", "32", "--batch", "2", "--latency-frames", "32", "--scaling",
                 "--repeats", "1", "--repeats-latency", "1", "--repeats-paired", "1",
                 "--pipeline", "--timeout", "300", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"cpu", "cores", "jax", "devices", "python"} <= set(result["machine"])
    assert result["matmul_peak_gflops"] == max(result["matmul_peak_gflops_start"],
                                               result["matmul_peak_gflops_end"])
    (row,) = result["rows"]
    assert (row["backbone"], row["variant"]) == ("convtransformer", "light")
    assert row["params"] > 0 and row["fwd_flops"] > 0 and row["latency_ms"] > 0
    train = row["train"]["32"]
    assert "error" not in train, train["error"]
    assert train["jit_cache_entries"] == 1
    assert train["train_flops"] > row["fwd_flops"]
    assert train["utt_per_s"] == pytest.approx(2 / (train["step_ms"] / 1e3))
    assert train["peak_rss_mb"] >= train["rss_at_start_mb"] > 0
    (paired,) = result["paired"]
    assert paired["ratio"] == pytest.approx(paired["merged_ms"] / paired["light_ms"])
    assert result["scaling"] == [] and result["pipeline"] == [] and result["runtimes"] == []
    printed = capsys.readouterr().out
    assert render(result) in printed
    assert f"| convtransformer | light | {row['params']:,} |" in printed


@pytest.mark.parametrize("name", ["cpu_all", "cpu_latency_651", "cpu_paired"])
def test_committed_tables_render_from_their_json(name):
    result = json.loads((RESULTS / f"{name}.json").read_text())
    assert render(result) == (RESULTS / f"{name}.md").read_text()
