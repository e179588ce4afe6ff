"""Optional packages that are missing fail at once, naming the module and the pip command.

Modules are hidden with ``sys.modules[name] = None`` (``find_spec`` then reports them missing
and importing them fails), so these tests run whether or not the extras are installed (and
whatever earlier tests imported)."""

import sys

import pytest

import hrf_jax_runtime as runtime
from hrf_jax.cli import main
from hrf_jax.export.extras import INSTALL, MODULES

HIDDEN = [(fmt, module) for fmt, modules in MODULES.items() for module in modules]


def hide(monkeypatch, module: str) -> None:
    """Makes ``module`` unimportable, its submodules too (an earlier test may have imported
    ``ai_edge_litert.interpreter``, which would otherwise still import)."""
    for name in {module, *(m for m in sys.modules if m.startswith(module + "."))}:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize(("fmt", "module"), HIDDEN)
def test_export_without_a_module_exits_2_naming_it_and_the_extra(fmt, module, monkeypatch,
                                                                   tmp_path, capsys):
    hide(monkeypatch, module)
    missing_run = tmp_path / "no_run"  # read first, it would fail with another message
    code = main(["export", "--workdir", str(missing_run), "--format", fmt,
                 "--out", str(tmp_path / f"model.{fmt}")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"needs the module(s) {module}," in err and INSTALL in err


@pytest.mark.parametrize(("fmt", "module"), HIDDEN)
def test_export_model_checks_the_modules_before_reading_the_checkpoint(fmt, module,
                                                                       monkeypatch, tmp_path):
    from hrf_jax.export import export_model

    hide(monkeypatch, module)
    with pytest.raises(ModuleNotFoundError, match=module) as err:
        export_model(fmt, tmp_path / f"model.{fmt}", workdir=tmp_path / "no_run")
    assert err.value.name == module


@pytest.mark.parametrize(("suffix", "module", "package"),
                         [(".tflite", "ai_edge_litert", "ai-edge-litert"),
                          (".onnx", "onnxruntime", "onnxruntime")])
def test_runtime_without_its_backend_names_the_module_and_pip_command(suffix, module, package,
                                                                      monkeypatch, tmp_path):
    model = tmp_path / f"model{suffix}"
    model.write_bytes(b"not read: the backend is imported first")
    hide(monkeypatch, module)
    with pytest.raises(ModuleNotFoundError, match=f"pip install {package} ") as err:
        runtime.open_backend(model)
    assert err.value.name == module and str(model) in str(err.value)
