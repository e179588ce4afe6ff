"""``fit_population``: K seeds trained by one vmapped step write the run folders K separate
``fit`` runs write (numbers equal up to float rounding), resume after an interruption (members
found at different steps included) to the uninterrupted result, and refuse configs that do
not share one program."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from hrf_jax.config import apply_overrides, default_config
from hrf_jax.loop import fit
from hrf_jax.population_loop import fit_population
from hrf_jax.run import FINAL, Run

SEEDS = (0, 1)


@pytest.fixture(scope="module")
def make_config(tiny_data_dir, tiny_overrides):
    """``make_config(seed, **extra)``: a tiny run config (SGD: Adam turns rounding noise in a
    zero gradient into full-size steps, which no tolerance compares); mid-epoch checkpoints
    every 3 steps, so a resume can start inside an epoch."""

    def make(seed: int, **extra):
        config = default_config()
        apply_overrides(config, tiny_overrides(tiny_data_dir, **{
            "model.size": "light", "model.hrf_ratio": 0, "optimizer.name": "sgd",
            "optimizer.lr": 0.05, "train.seed": seed, "train.save_every_steps": 3,
            "train.keep_last": 3, **extra}))
        return config

    return make


@pytest.fixture(scope="module")
def population_dirs(make_config, tmp_path_factory):
    """A finished K = 2 population (the uninterrupted reference of the resume test)."""
    root = tmp_path_factory.mktemp("population")
    workdirs = [root / f"seed{s}" for s in SEEDS]
    fit_population([make_config(s) for s in SEEDS], workdirs)
    return workdirs


def without_timings(path: Path) -> dict:
    summary = json.loads(path.read_text())
    for record in summary["history"]:
        record.pop("seconds")
    return summary


def leaves(workdir: Path, which: str = "last") -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(Run.load(workdir).variables(which))]


def test_population_equals_separate_runs(population_dirs, make_config, tmp_path):
    # member 1 (seed 1: its seed, not its position, picks init, rngs and data order); member 0
    # runs the same code, so one separate run (a quarter of this file's time) is enough
    for seed, member in [(SEEDS[1], population_dirs[1])]:
        separate = tmp_path / f"seed{seed}"
        fit(make_config(seed), separate)
        got, want = (json.loads((w / FINAL).read_text()) for w in (member, separate))
        assert got.keys() == want.keys()
        assert [r["step"] for r in got["history"]] == [r["step"] for r in want["history"]]
        np.testing.assert_allclose([r["train_loss"] for r in got["history"]],
                                   [r["train_loss"] for r in want["history"]], rtol=1e-4)
        for key in ("validation", "test", "validation_last", "test_last"):
            # float noise may flip one argmax: at most one utterance apart
            assert abs(got[key]["wa"] - want[key]["wa"]) * got[key]["num_examples"] <= 1.001
        for a, b in zip(leaves(member), leaves(separate), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert sorted(p.name for p in member.iterdir()) == sorted(
            p.name for p in separate.iterdir())
    first = [leaves(w)[0] for w in population_dirs]
    assert not np.allclose(*first)  # the members do differ
    # finished members are not trained again: their saved summaries come back
    again = fit_population([make_config(s) for s in SEEDS], population_dirs)
    assert again == [json.loads((w / FINAL).read_text()) for w in population_dirs]


def test_interrupted_population_resumes_to_the_same_result(population_dirs, make_config,
                                                           tmp_path, capsys):
    """As if killed between the members' saves: member 0 one checkpoint ahead of member 1,
    both inside epoch 2; member 0 is rewound and both resume bit-identically."""
    resumed = [shutil.copytree(w, tmp_path / w.name) for w in population_dirs]
    steps = sorted(int(p.name) for p in (resumed[0] / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert len(steps) == 3
    for member, keep in zip(resumed, (steps[1], steps[0]), strict=True):
        (member / FINAL).unlink()
        for folder in ("checkpoints", "best"):
            for p in (member / folder).iterdir():
                if p.name.isdigit() and int(p.name) > keep:
                    shutil.rmtree(p)
    capsys.readouterr()
    fit_population([make_config(s) for s in SEEDS], resumed)
    out = capsys.readouterr().out
    assert f"members are at steps [{steps[1]}, {steps[0]}]; all resume from step {steps[0]}" in out
    for reference, member in zip(population_dirs, resumed, strict=True):
        assert without_timings(member / FINAL) == without_timings(reference / FINAL)
        for which in ("last", "best"):
            for a, b in zip(leaves(reference, which), leaves(member, which), strict=True):
                np.testing.assert_array_equal(a, b)  # bit-identical on CPU


@pytest.mark.parametrize(("override", "field"), [
    ("optimizer.lr=0.1", "optimizer.lr"),
    ("train.max_frames=80", "train.max_frames"),
    ("model.hrf_ratio=4", "model.hrf_ratio"),
])
def test_members_differing_beyond_the_seed_are_refused(make_config, tmp_path, override,
                                                       field):
    other = make_config(1)
    apply_overrides(other, [f"config.{override}"])
    with pytest.raises(ValueError, match=field):
        fit_population([make_config(0), other], [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "a").exists()  # refused before anything is written


def test_distributed_and_shared_workdirs_are_refused(make_config, tmp_path):
    with pytest.raises(ValueError, match="workdirs must differ"):
        fit_population([make_config(0), make_config(1)], [tmp_path / "a", tmp_path / "a"])
    distributed = [make_config(s, **{"train.distributed": True}) for s in SEEDS]
    with pytest.raises(ValueError, match="distributed"):
        fit_population(distributed, [tmp_path / "a", tmp_path / "b"])
