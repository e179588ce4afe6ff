"""hrf-jax export: tiny trained runs -> LiteRT / ONNX, parity, quantization, sidecar, runtime.

Conversions are slow on 2 cores (seconds each), so the combinations are spread out rather than
crossed: every backbone is exported once in float32 (Conformer to both formats and with the
front-end; SpeechFormer to LiteRT; ConvTransformer to ONNX with the front-end), ONNX's dynamic
time axis once (and its refusal for SpeechFormer), and the three LiteRT quantizations on the
light Conformer. The jax2onnx workarounds are checked on functions of a few lines each.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

import hrf_jax_runtime.model as runtime
from hrf_jax.cli import main
from hrf_jax.export import (
    FP32_TOLERANCE,
    MIN_DYNAMIC_FRAMES,
    ParityError,
    export_model,
    graph_fn,
    load_source,
    onnx_compat,
)

pytest.importorskip("tensorflow")
pytest.importorskip("jax2onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

BLOCKED = ("jax", "jaxlib", "tensorflow", "flax", "hrf_jax", "optax", "orbax")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """The float32 exports shared by the tests below: name -> (path, sidecar dict)."""
    root = tmp_path_factory.mktemp("exported")
    plan = {
        "conformer.onnx": ("conformer", "onnx", {}),
        "conformer_frontend.tflite": ("conformer", "tflite", {"frontend": True}),
        "speechformer.tflite": ("speechformer", "tflite", {}),
        "convtransformer_frontend.onnx": ("convtransformer", "onnx", {"frontend": True}),
    }
    out = {}
    for name, (backbone, fmt, kwargs) in plan.items():
        path = root / name
        meta = export_model(fmt, path, workdir=trained_run(backbone), num_check=8, **kwargs)
        out[name] = (path, meta)
    return out


@pytest.fixture(scope="module")
def conformer_reference(trained_run):
    """The Conformer run's own JAX graph (HRF, unfolded) on log-Mel input, and its run info."""
    src = load_source(workdir=trained_run("conformer"))
    fn = jax.jit(graph_fn(src.reference_model, src.reference_variables, src.info, False))

    def run(signal, length):
        with jax.default_matmul_precision("highest"):
            return np.asarray(fn(signal, np.asarray(length, np.int32)))

    return run, src.info


@pytest.mark.parametrize("name", ["conformer.onnx", "conformer_frontend.tflite",
                                  "speechformer.tflite", "convtransformer_frontend.onnx"])
def test_fp32_parity(exported, name):
    path, meta = exported[name]
    parity = meta["parity"]
    assert parity["max_abs_logit_diff"] <= FP32_TOLERANCE
    assert parity["argmax_agreement"] == 1.0
    assert parity["utterances"] == 8
    assert json.loads(runtime.sidecar_path(path).read_text()) == meta


def test_sidecar_content(exported, trained_run):
    path, meta = exported["conformer_frontend.tflite"]
    assert runtime.sidecar_path(path).name == "conformer_frontend.tflite.json"
    info = json.loads((trained_run("conformer") / "run_info.json").read_text())
    assert meta["class_names"] == info["class_names"]
    assert meta["sample_rate"] == 16000 and meta["frontend"] is True
    assert meta["input"]["shape"] == [1, 48000] and meta["input"]["kind"] == "audio"
    assert meta["length_input"]["unit"] == "samples"
    assert meta["mel"]["num_mels"] == info["feature_dim"] and meta["mean"] == info["mean"]
    assert meta["source"]["batchnorm_folded"] is True
    assert meta["source"]["hrf_layers_merged"] > 0
    assert meta["source"]["checkpoint"] == "best"
    assert meta["source"]["path"] == str(trained_run("conformer").absolute())
    assert meta["size_bytes"] == path.stat().st_size
    _, plain = exported["conformer.onnx"]
    assert plain["input"]["shape"] == [1, 300, info["feature_dim"]]
    assert plain["length_input"]["unit"] == "frames"
    # SpeechFormer has no BatchNorm: nothing to fold
    assert exported["speechformer.tflite"][1]["source"]["batchnorm_folded"] is False


def test_deploy_folder_gives_the_workdir_model(trained_run):
    """``--checkpoint DEPLOY`` (merged by ``hrf-jax merge``) exports the same plain model as
    ``--workdir``; its reference is the plain model, with no HRF layer left to merge."""
    workdir = trained_run("conformer")
    from_run = load_source(workdir=workdir)
    from_deploy = load_source(checkpoint=workdir / "deploy")
    assert from_deploy.checkpoint == "deploy" and from_deploy.hrf_layers == 0
    assert from_deploy.folded_bn is from_run.folded_bn is True
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                           from_deploy.variables, from_run.variables)
    assert from_deploy.info == from_run.info


def test_onnx_dynamic_time(trained_run, conformer_reference, tmp_path):
    """One ONNX file with a symbolic T matches JAX at several lengths (padding masked, and
    shorter than its ``min_time`` through the runtime's zero-padding)."""
    reference, info = conformer_reference
    out = tmp_path / "dyn.onnx"
    meta = export_model("onnx", out, workdir=trained_run("conformer"), dynamic_time=True,
                        num_check=4)
    assert meta["input"]["shape"][1] == "T" and meta["input"]["dynamic_time"] is True
    assert meta["input"]["min_time"] == MIN_DYNAMIC_FRAMES
    assert meta["parity"]["max_abs_logit_diff"] <= FP32_TOLERANCE
    run = runtime.open_backend(out)
    rng = np.random.default_rng(0)
    for frames, valid in ((137, 137), (411, 380)):
        x = rng.standard_normal((1, frames, info["feature_dim"])).astype(np.float32)
        length = np.asarray([valid], np.int32)
        np.testing.assert_allclose(run(x, length), reference(x, length), atol=FP32_TOLERANCE)
    short = rng.standard_normal((10, info["feature_dim"])).astype(np.float32)
    want = reference(short[None], [10])[0]
    got, lengths = runtime.ExportedModel(out).logits_windows(short)
    assert lengths.tolist() == [10]
    np.testing.assert_allclose(got[0], want, atol=FP32_TOLERANCE)


def test_onnx_dynamic_time_refused_for_speechformer(trained_run, tmp_path):
    """SpeechFormer's token merging (pad T to a multiple, reshape with -1) has no symbolic
    form jax can prove: the export says which backbones work instead of writing a file."""
    with pytest.raises(ValueError, match="conformer / convtransformer"):
        export_model("onnx", tmp_path / "dyn.onnx", workdir=trained_run("speechformer"),
                     dynamic_time=True, num_check=4)
    assert not list(tmp_path.iterdir())


def test_quantized_litert(trained_run, tmp_path):
    sizes = {}
    for quantize in ("fp16", "int8-dynamic", "int8"):
        out = tmp_path / f"q_{quantize}.tflite"
        meta = export_model("tflite", out, workdir=trained_run("conformer"), quantize=quantize,
                            num_check=4, eval_limit=12, calibration=8)
        ev = meta["parity"]["evaluation"]
        assert ev["utterances"] == 12
        for key in ("exported", "fp32_jax"):
            assert 0.0 <= ev[key]["wa"] <= 1.0 and 0.0 <= ev[key]["ua"] <= 1.0
        assert 0.0 <= ev["prediction_agreement"] <= 1.0
        assert np.isfinite(meta["parity"]["max_abs_logit_diff"])
        sizes[quantize] = meta["size_bytes"]
        if quantize == "int8":
            # float only where attention masks need it (the mask select and its softmax)
            assert meta["conversion"]["float_nodes"] > 0
            # loose: 2 epochs on the tiny corpus
            assert meta["parity"]["argmax_agreement"] >= 0.75
            assert ev["prediction_agreement"] >= 0.8
    assert sizes["int8-dynamic"] < sizes["fp16"]
    assert sizes["int8"] < sizes["fp16"]


def test_parity_failure_is_reported(trained_run, exported, tmp_path, monkeypatch, capsys):
    from hrf_jax.export import pipeline

    blob = exported["conformer.onnx"][0].read_bytes()  # skip a second conversion
    monkeypatch.setattr(pipeline, "to_onnx", lambda fn, spec: (blob, {}))
    out = tmp_path / "bad.onnx"
    with pytest.raises(ParityError, match="fails float32 parity"):
        export_model("onnx", out, workdir=trained_run("conformer"), num_check=2,
                     tolerance=-1.0)
    assert not out.exists() and not list(tmp_path.iterdir())
    rc = main(["export", "--workdir", str(trained_run("conformer")), "--format", "onnx",
               "--out", str(out), "--num-check", "2", "--tolerance", "-1"])
    assert rc == 1 and "fails float32 parity" in capsys.readouterr().err


def test_cli_export_says_what_it_wrote(trained_run, exported, tmp_path, monkeypatch, capsys):
    from hrf_jax.export import pipeline

    blob = exported["conformer.onnx"][0].read_bytes()  # skip a second conversion
    monkeypatch.setattr(pipeline, "to_onnx", lambda fn, spec: (blob, {}))
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(trained_run("conformer") / "deploy"),
                 "--format", "onnx", "--out", str(out), "--num-check", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out} ({len(blob):,} bytes, onnx, quantize=none) and "
                           f"{runtime.sidecar_path(out)}; max |logit diff| ")
    assert line.endswith("argmax agreement 1.000 over 2 utterances")
    meta = json.loads(runtime.sidecar_path(out).read_text())
    assert meta["source"]["checkpoint"] == "deploy" and meta["source"]["hrf_layers_merged"] == 0


def test_bad_arguments(tmp_path):
    """Refused before anything is loaded, with the option to change."""
    workdir = tmp_path / "never_read"
    with pytest.raises(ValueError, match="fixed time axis"):
        export_model("tflite", tmp_path / "m.tflite", workdir=workdir, dynamic_time=True)
    with pytest.raises(ValueError, match="LiteRT only"):
        export_model("onnx", tmp_path / "m.onnx", workdir=workdir, quantize="int8")
    with pytest.raises(ValueError, match="should end in"):
        export_model("onnx", tmp_path / "m.tflite", workdir=workdir)
    with pytest.raises(ValueError, match="exactly one of --workdir"):
        export_model("onnx", tmp_path / "m.onnx")


# --------------------------------------------------------------------------- jax2onnx workarounds


def _where_concat(x):  # x (1, 4)
    return jnp.concatenate([jnp.where(x > 0, x, 0), x], axis=-1)


def _arange_add(x):  # x (1, T)
    return x + jnp.arange(x.shape[1], dtype=jnp.float32)[None]


def _sliced_gather(x):  # x (1, T): bounds of T - 1 and T - 2, then a gather
    return x[:, 1:][:, jax.lax.iota(jnp.int32, x.shape[1] - 2)]


# workaround -> (the smallest function it is needed for, symbolic time?, the failure without it)
CANARIES = {
    "typed_where": (_where_concat, False, r"tensor\(double\)"),
    "iota_arange": (_arange_add, True, "_DynamicDimSentinel"),
    "shared_symbolic_scopes": (_sliced_gather, True, "_normalization_rules"),
}


def _convert_and_run(fn, symbolic, workarounds):
    """Converts ``fn`` with ``workarounds``; onnxruntime must match JAX on a (1, 6) (symbolic
    T) or (1, 4) input."""
    (t,) = jax.export.symbolic_shape("T", constraints=("T >= 4",)) if symbolic else (4,)
    model = onnx_compat.to_onnx(fn, [jax.ShapeDtypeStruct((1, t), jnp.float32)],
                                workarounds=workarounds, model_name="canary")
    session = ort.InferenceSession(model.SerializeToString())
    x = np.linspace(-1.0, 1.0, 6 if symbolic else 4, dtype=np.float32)[None]
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, np.asarray(fn(x)), atol=1e-6)


def _workaround(name):
    (found,) = [w for w in onnx_compat.WORKAROUNDS if w.name == name]
    return found


def test_every_workaround_has_a_canary():
    assert sorted(CANARIES) == sorted(w.name for w in onnx_compat.WORKAROUNDS)


def test_a_workaround_is_applied_only_before_its_fix(monkeypatch):
    fixed = onnx_compat.Workaround("fixed", onnx_compat._typed_where, "trace", fixed_in=(0, 18))
    assert fixed.needed((0, 17, 1)) and not fixed.needed((0, 18, 0))
    monkeypatch.setattr(onnx_compat, "WORKAROUNDS", (fixed,))
    monkeypatch.setattr(onnx_compat, "jax2onnx_version", lambda: (0, 18, 0))
    assert onnx_compat.needed_workarounds() == ()


@pytest.mark.parametrize("name", sorted(CANARIES))
def test_jax2onnx_still_needs_workaround(name):
    """Fails once the installed jax2onnx converts the minimal case without the workaround."""
    workaround, version = _workaround(name), onnx_compat.jax2onnx_version()
    if not workaround.needed(version):
        pytest.skip(f"{name} is not applied from jax2onnx {workaround.fixed_in} on")
    fn, symbolic, failure = CANARIES[name]
    try:
        _convert_and_run(fn, symbolic, workarounds=())
    except Exception as err:
        assert re.search(failure, str(err)), err
    else:
        v = ".".join(map(str, version))
        pytest.fail(f"jax2onnx {v} (jax {jax.__version__}) no longer needs workaround {name}: "
                    f"set its fixed_in=({', '.join(map(str, version))}) in "
                    f"hrf_jax/export/onnx_compat.py, and remove it once setup.cfg requires "
                    f"jax2onnx>={v}")


@pytest.mark.parametrize("name", sorted(CANARIES))
def test_workaround_fixes_its_minimal_case(name):
    fn, symbolic, _ = CANARIES[name]
    _convert_and_run(fn, symbolic, workarounds=(_workaround(name),))


def test_workarounds_are_undone_after_a_failed_conversion():
    from jax._src.export import shape_poly

    where, arange = jnp.where, jnp.arange

    def broken(x):
        raise RuntimeError("broken on purpose")

    with pytest.raises(RuntimeError, match="broken on purpose"):
        onnx_compat.to_onnx(broken, [jax.ShapeDtypeStruct((1, 4), jnp.float32)],
                            workarounds=onnx_compat.WORKAROUNDS)
    assert jnp.where is where and jnp.arange is arange
    assert "__deepcopy__" not in vars(shape_poly.SymbolicScope)


# --------------------------------------------------------------------------- runtime


def _wav(path, seconds, sr=22050, channels=2, seed=0):
    from hrf_jax.data.synthetic import SyntheticConfig, synthesize

    wave, _, _ = synthesize(SyntheticConfig(seed=7, min_seconds=seconds, max_seconds=seconds),
                            seed)
    import soxr

    wave = soxr.resample(wave, 16000, sr)
    sf.write(str(path), np.stack([wave] * channels, axis=1), sr)
    return path


def test_runtime_without_jax(exported, tmp_path):
    """The device runtime with JAX/TF/Flax/hrf_jax imports blocked predicts both formats,
    with and without the front-end, and for audio longer than the window; its command line
    (``hrf-jax-predict``) too."""
    short = _wav(tmp_path / "short.wav", 2.0)
    long = _wav(tmp_path / "long.wav", 7.0, sr=8000, channels=1, seed=1)
    models = [str(exported[n][0]) for n in ("conformer.onnx", "conformer_frontend.tflite",
                                             "speechformer.tflite",
                                             "convtransformer_frontend.onnx")]
    script = textwrap.dedent(f"""
        import importlib.abc, importlib.util, json, sys
        BLOCKED = {BLOCKED!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import hrf_jax_runtime as rt
        from hrf_jax_runtime.model import main
        assert main([{models[0]!r}, {str(short)!r}]) == 0
        rows = []
        for m in {models!r}:
            model = rt.ExportedModel(m)
            for wav in ({str(short)!r}, {str(long)!r}):
                rows.append(model.predict_file(wav))
        loaded = sorted(k for k in sys.modules if k.split(".")[0] in BLOCKED)
        print(json.dumps({{"rows": rows, "loaded": loaded}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    names = exported["conformer.onnx"][1]["class_names"]
    for row in result["rows"]:
        assert row["label"] in names
        assert abs(sum(row["probs"].values()) - 1.0) < 1e-5
    assert result["rows"][1]["seconds"] == pytest.approx(7.0, abs=0.01)


def test_runtime_matches_jax(exported, conformer_reference, tmp_path):
    """A short wav: runtime probabilities (numpy log-Mel, padded window) == JAX graph on the
    features of hrf_jax.deploy.features_for (whole utterance, no padding)."""
    from hrf_jax.deploy import features_for

    reference, info = conformer_reference
    wav = _wav(tmp_path / "a.wav", 2.5, sr=16000, channels=1, seed=3)
    feats = features_for(wav, info)
    want = runtime.softmax(reference(feats[None], [len(feats)]))[0]
    for name in ("conformer.onnx", "conformer_frontend.tflite"):
        got = runtime.ExportedModel(exported[name][0]).predict_file(wav)
        probs = np.asarray([got["probs"][n] for n in info["class_names"]])
        np.testing.assert_allclose(probs, want, atol=2e-4)


def test_cli_predict_with_model(exported, tmp_path, capsys):
    wav = _wav(tmp_path / "b.wav", 1.5)
    path = exported["speechformer.tflite"][0]
    assert main(["predict", "--model", str(path), str(wav), str(wav)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2 and lines[0] == lines[1]
    assert lines[0]["path"] == str(wav) and set(lines[0]["probs"]) == set(
        exported["speechformer.tflite"][1]["class_names"])


