"""The README's snippets work: cheap Python blocks run, every `hrf-jax <subcommand>` it names
answers ``--help``. A block preceded by ``<!-- skip-test -->`` is not run; blocks inside
generated sections (``<!-- name:start -->`` .. ``<!-- name:end -->``) are their owners' to test."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from hrf_jax.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP = "<!-- skip-test -->"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
_GENERATED = re.compile(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", re.S)
_SUBCOMMAND = re.compile(r"(?<![\w-])hrf-jax\s+([a-z][a-z_-]*)")


def _blocks(text: str) -> list[tuple[str, str, bool, int]]:
    """(language, code, runnable, line) of every fenced block."""
    generated = [m.span() for m in _GENERATED.finditer(text)]
    out = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()].rstrip()
        inside = any(a <= m.start() < b for a, b in generated)
        out.append((m.group(1), m.group(2), not before.endswith(SKIP) and not inside,
                    text.count("\n", 0, m.start()) + 1))
    return out


BLOCKS = _blocks(README.read_text())
PYTHON = [(code, line) for lang, code, run, line in BLOCKS if lang == "python" and run]
SUBCOMMANDS = sorted({name for lang, code, _, _ in BLOCKS if lang in ("bash", "sh", "")
                      for name in _SUBCOMMAND.findall(code)}
                     | set(_SUBCOMMAND.findall(re.sub(r"```.*?```", "", README.read_text(),
                                                      flags=re.S))))


def test_readme_has_runnable_python_and_the_cli():
    assert len(PYTHON) >= 2
    assert {"demo", "prepare", "train", "eval", "merge", "predict", "export",
            "bench"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("code,line", PYTHON, ids=[f"line{line}" for _, line in PYTHON])
def test_python_block_runs(code, line, tmp_path):
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"README.md block at line {line} failed:\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_cli_subcommand_named_in_readme_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0, f"`hrf-jax {command} --help` failed"
    assert f"usage: hrf-jax {command}" in capsys.readouterr().out


def test_readme_diagram_exists():
    assert "docs/hrf_diagram.svg" in README.read_text()
    assert (README.parent / "docs" / "hrf_diagram.svg").stat().st_size > 1000
