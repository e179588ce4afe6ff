"""``hrf-jax bench --reference-speechformer``: the side-by-side with the official PyTorch
SpeechFormer. Cheap and torch-free: statistics on synthetic timings, the A B A B order, the
worker command lines, the setup errors, the workers' own peak RSS. One real run needs
``HRF_JAX_REFERENCE_SPEECHFORMER`` (a checkout) and a python with torch
(``HRF_JAX_REFERENCE_PYTHON``, default this one) and is skipped otherwise (as in CI)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median

import pytest

from hrf_jax.bench import reference
from hrf_jax.bench.procmem import peak_rss_mb
from hrf_jax.bench.reference import (
    ReferenceSetupError,
    check_reference,
    commands,
    side_by_side,
    summarize,
    worker_env,
)
from hrf_jax.bench.report import render_side_by_side
from hrf_jax.cli import main


def _worker(step_ms: float, latency_ms: float, peak: float, **extra) -> dict:
    return {"step_ms": step_ms, "latency_ms": latency_ms, "matmul_peak_gflops": peak,
            "peak_rss_mb": 800.0, "params": 1_059_428, **extra}


# issue #15's timings on the 2-core machine: official then hrf_jax, four pairs
OFFICIAL = [_worker(s, 8.0, 189.0, torch="2.x", threads=2, device="cpu")
            for s in (897, 957, 922, 961)]
OURS = [_worker(s, 10.0, 214.0, train_flops=40e9, jax="0.x", device="cpu:0")
        for s in (710, 835, 728, 852)]


def test_per_pair_ratios_median_and_range():
    s = summarize(OFFICIAL, OURS)
    ratios = [897 / 710, 957 / 835, 922 / 728, 961 / 852]
    assert s["pairs"] == 4
    assert s["step_ms"]["ratio"]["min"] == pytest.approx(min(ratios))
    assert s["step_ms"]["ratio"]["max"] == pytest.approx(max(ratios))
    assert s["step_ms"]["ratio"]["median"] == pytest.approx(median(ratios))
    assert s["step_ms"]["reference"] == {"median": 939.5, "min": 897.0, "max": 961.0}
    assert s["latency_ms"]["ratio"]["median"] == pytest.approx(0.8)
    assert s["matmul_peak_gflops"]["hrf_jax"]["median"] == 214.0
    assert s["matmul_peak_gflops"]["reference"]["median"] == 189.0
    # MFU: hrf_jax's XLA FLOPs per second over its own process's peak
    assert s["mfu"]["hrf_jax"]["max"] == pytest.approx(40e9 / 0.710 / 214e9)
    assert s["mfu"]["reference_at_hrf_jax_flops"]["min"] == pytest.approx(40e9 / 0.961 / 189e9)
    table = render_side_by_side({"summary": s, "reference": OFFICIAL, "hrf_jax": OURS,
                                 "batch": 32, "frames": 651, "load_avg_at_end": (2, 2, 2),
                                 "machine": {"load_avg_at_start": (1.0, 1.5, 2.0),
                                             "cores": 2}})
    assert ("| train step, B=32, T=651, SGD | 939.5 (897.0-961.0) | 781.5 (710.0-852.0) "
            "| 1.20 (1.13-1.27) |") in table
    assert "start 1.00, 1.50, 2.00" in table and "busy machine" not in table
    busy = render_side_by_side({"summary": s, "reference": OFFICIAL, "hrf_jax": OURS,
                                "batch": 32, "frames": 651, "load_avg_at_end": (2, 2, 2),
                                "machine": {"load_avg_at_start": (1.1, 1.5, 2.0), "cores": 2}})
    assert "busy machine" in busy and "unsteady" not in busy
    disturbed = summarize(OFFICIAL[:3] + [_worker(9000, 8.0, 189.0)], OURS)
    assert ("unsteady: the official train step varied 10.03x between its processes"
            in render_side_by_side({"summary": disturbed, "reference": OFFICIAL, "hrf_jax": OURS,
                                    "batch": 32, "frames": 651, "load_avg_at_end": (2, 2, 2),
                                    "machine": {"load_avg_at_start": (0.5, 1, 1), "cores": 2}}))


def test_a_pair_with_a_missing_side_is_an_error():
    with pytest.raises(ValueError):
        summarize(OFFICIAL, OURS[:3])


def test_processes_alternate_official_first(monkeypatch, tmp_path):
    calls = []

    def fake_worker(cmd, env, timeout):
        calls.append("reference" if cmd[1].endswith("torch_worker.py") else "hrf_jax")
        return OFFICIAL[0] if calls[-1] == "reference" else OURS[0]

    monkeypatch.setattr(reference, "check_reference", lambda d, p: "2.x")
    monkeypatch.setattr(reference, "run_worker", fake_worker)
    result = side_by_side(str(tmp_path), "python", pairs=3, frames=651, batch=32, repeats=5,
                          latency_repeats=30, device="cpu", timeout=10, log=lambda m: None)
    assert calls == ["reference", "hrf_jax"] * 3
    assert result["summary"]["pairs"] == 3 and result["reference_torch"] == "2.x"
    assert {"cpu", "cores", "load_avg_at_start"} <= set(result["machine"])


def test_both_workers_get_the_same_shapes_and_sgd():
    cmds = commands("some/dir", "/opt/torch/bin/python", frames=651, batch=32, repeats=5,
                    latency_repeats=30, device="gpu")
    python, script, spec = cmds["reference"]
    assert python == "/opt/torch/bin/python" and Path(script).is_file()
    ref = json.loads(spec)
    assert ref["dir"] == str(Path("some/dir").resolve())
    assert (ref["frames"], ref["batch"], ref["feat_dim"], ref["num_classes"]) == (651, 32, 128, 4)
    assert ref["device"] == "gpu" and ref["threads"] == os.cpu_count()
    assert cmds["hrf_jax"][:3] == [sys.executable, "-m", "hrf_jax.bench.worker"]
    ours = json.loads(cmds["hrf_jax"][3])
    assert ours == {"backbone": "speechformer", "variant": "S", "frames": 651, "batch": 32,
                    "repeats": 5, "optimizer": "sgd", "ragged": False, "latency_repeats": 30,
                    "matmul_peak": True}
    assert worker_env("cpu")["JAX_PLATFORMS"] == "cpu"
    assert worker_env("gpu").get("JAX_PLATFORMS") == os.environ.get("JAX_PLATFORMS")


def test_a_dir_without_the_official_model_names_the_missing_file(tmp_path, capsys):
    assert main(["bench", "--reference-speechformer", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "model" / "speechformer.py") in err and "not found" in err


def _checkout(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "speechformer.py").write_text("")
    return tmp_path


def test_a_python_without_torch_fails_at_once_with_the_install_command(tmp_path, capsys):
    proc = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
    if proc.returncode == 0:
        pytest.skip("this python has torch")
    assert main(["bench", "--reference-speechformer", str(_checkout(tmp_path)),
                 "--reference-python", sys.executable]) == 2
    err = capsys.readouterr().err
    assert f"--reference-python {sys.executable} cannot import torch" in err
    assert "pip install torch numpy" in err


def test_a_missing_python_and_a_too_short_crop_are_setup_errors(tmp_path):
    with pytest.raises(ReferenceSetupError, match="cannot run"):
        check_reference(str(_checkout(tmp_path)), str(tmp_path / "no-python"))
    with pytest.raises(ReferenceSetupError, match="must exceed 100"):
        side_by_side(str(tmp_path), sys.executable, pairs=1, frames=100, batch=2, repeats=1,
                     latency_repeats=1, device="cpu", timeout=10, log=print)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_worker_reports_its_own_peak_not_its_parents():
    ballast = b"\x01" * (256 << 20)  # touched pages: the parent's peak is above 256 MB
    child = subprocess.run(
        [sys.executable, "-c", "from hrf_jax.bench.procmem import peak_rss_mb as p; print(p())"],
        capture_output=True, text=True, check=True)
    assert peak_rss_mb() > 256 > float(child.stdout) > 0
    del ballast


def test_peak_rss_falls_back_to_ru_maxrss_without_proc(monkeypatch):
    def no_proc(*args, **kwargs):
        raise OSError("no /proc")

    monkeypatch.setattr("builtins.open", no_proc)
    assert peak_rss_mb() > 0


@pytest.mark.slow
def test_a_real_small_side_by_side(tmp_path, capsys):
    ref_dir = os.environ.get("HRF_JAX_REFERENCE_SPEECHFORMER")
    if not ref_dir:
        pytest.skip("HRF_JAX_REFERENCE_SPEECHFORMER (official checkout) is not set")
    python = os.environ.get("HRF_JAX_REFERENCE_PYTHON")
    if python is None:  # the reference runs under this python, then
        pytest.importorskip("torch")
        python = sys.executable
    out = tmp_path / "sbs.json"
    assert main(["bench", "--reference-speechformer", ref_dir, "--reference-python", python,
                 "--pairs", "1", "--batch", "2", "--reference-frames", "120", "--repeats", "1",
                 "--repeats-latency", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (official,), (ours,) = result["reference"], result["hrf_jax"]
    assert official["params"] == ours["params"]  # the same SpeechFormer-S
    assert result["summary"]["step_ms"]["ratio"]["median"] > 0
    assert "official / hrf_jax per pair" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["reference_cpu", "reference_cpu_busy", "reference_gpu_h100"])
def test_committed_side_by_side_tables_render_from_their_json(name):
    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    result = json.loads((results / f"{name}.json").read_text())
    assert render_side_by_side(result) == (results / f"{name}.md").read_text()
