"""The import graph is one-way: cli -> (run, loop, deploy, export, bench) -> models ->
layers / reparam; data -> audio; the device runtime (``runtime/``, a distribution of its own)
imports nothing from ``hrf_jax`` and no JAX, Flax or TensorFlow.
Checked on the source (every ``import``, also inside functions), so a new edge fails here."""

import ast
import tomllib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hrf_jax"
RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
# what a device install must not need
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "tensorflow", "tensorflow_datasets", "grain",
         "hrf_jax")
# the building blocks of models and of the re-parameterizations
CORE = ("hrf_jax.hrf", "hrf_jax.layers", "hrf_jax.attention", "hrf_jax.local_attention",
        "hrf_jax.masking", "hrf_jax.subsampling", "hrf_jax.trees", "hrf_jax.reparam",
        "hrf_jax.bn_fold", "hrf_jax.lazy", "hrf_jax.random_bits")
# what training, deployment and the command line are made of
UPPER = ("hrf_jax.run", "hrf_jax.loop", "hrf_jax.population_loop", "hrf_jax.deploy",
         "hrf_jax.export", "hrf_jax.bench", "hrf_jax.cli", "hrf_jax.demo", "hrf_jax.train",
         "hrf_jax.evaluate", "hrf_jax.data", "hrf_jax.checkpoint", "hrf_jax.config")


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every hrf_jax module ``path`` imports (``from hrf_jax import x``: ``hrf_jax.x`` too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("hrf_jax")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hrf_jax"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


GRAPH = {_module(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _within(name: str, rooms: tuple[str, ...]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in rooms)


def _offending(module: str, rooms: tuple[str, ...]) -> list[str]:
    return sorted(n for n in GRAPH[module] if _within(n, rooms) and not _within(module, rooms))


def _top_level_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_the_graph_covers_the_package():
    assert {"hrf_jax.run", "hrf_jax.cli", "hrf_jax.audio", "hrf_jax.models.conformer"} <= set(
        GRAPH)


@pytest.mark.parametrize("path", sorted(RUNTIME.rglob("*.py")), ids=lambda p: p.name)
def test_the_device_runtime_imports_no_training_stack(path):
    assert _top_level_imports(path).isdisjoint(HEAVY)


def test_the_device_runtime_depends_on_no_training_stack():
    project = tomllib.loads((RUNTIME / "pyproject.toml").read_text())["project"]
    needs = project["dependencies"] + [d for extra in project["optional-dependencies"].values()
                                       for d in extra]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip().replace("-", "_")
             for d in needs}
    assert names.isdisjoint(HEAVY) and {"numpy", "soundfile", "soxr"} <= names


@pytest.mark.parametrize("module", [m for m in GRAPH if _within(m, CORE + ("hrf_jax.models",))])
def test_models_and_core_do_not_import_upwards(module):
    assert _offending(module, UPPER) == []


@pytest.mark.parametrize("module", [m for m in GRAPH if _within(m, ("hrf_jax.data",))])
def test_data_imports_only_audio_logging_and_itself(module):
    allowed = ("hrf_jax.data", "hrf_jax.audio", "hrf_jax.lazy", "hrf_jax.logs")
    assert sorted(n for n in GRAPH[module] if not _within(n, allowed)) == []


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_only_training_imports_the_loop(module):
    # population_loop: fit_population runs loop's steps for each member
    if _within(module, ("hrf_jax.loop", "hrf_jax.population_loop", "hrf_jax.cli.train",
                        "hrf_jax.demo")):
        return
    assert _offending(module, ("hrf_jax.loop",)) == []


def test_the_command_line_is_imported_by_nothing_in_the_package():
    users = sorted(m for m in GRAPH if _offending(m, ("hrf_jax.cli",)) and m != "hrf_jax.__main__")
    assert users == []
