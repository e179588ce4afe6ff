"""The HRF study of issue #13: does HRF make a light model better, and is it more than a
learning-rate effect? Paired by seed, on a test bed with demonstrated headroom.

    python -m experiments.hrf_study train --variants light medium --seeds 0 1 2 3 4
    python -m experiments.hrf_study train --variants light light_hrf4 light_lr5 --seeds 0 ... 9
    python -m experiments.hrf_study report
    python -m experiments.hrf_study train --testbed headroom_4x --variants light medium ...
    python -m experiments.hrf_study prepare --testbed headroom_4x --workers 16   # before runs
                                                                  # started at once (GPU)
    python -m experiments.hrf_study train --backbone convtransformer --variants light ...
    python -m experiments.hrf_study train --recipe sgd --variants light light_hrf4 light_lr5 ...

``train`` runs the missing cells seed by seed (every variant of seed 0, then of seed 1, ...,
so an interrupted study leaves paired runs); each cell is an ``experiments.run`` cell of the
grid ``synthetic_headroom_<backbone>`` (Conformer by default: the gate and the first tiers;
ConvTransformer and SpeechFormer light are later tiers, their contrasts prefixed with the
backbone; ``--recipe sgd`` trains a tier with ``STUDY_RECIPES["sgd"]``, prefixed ``sgd_``) with
a test bed of ``TESTBEDS`` (corpus size and recipe) and resumes from its
checkpoint. ``report`` writes ``experiments/results/<stem>.json`` and
``.md`` (``hrf_study`` for the first test bed): the test-bed gate (``GATE``) and every
contrast of ``CONTRASTS`` whose runs exist, from the per-seed values it lists. Variants a
seed pairs with must share that seed's data order and initial values: the data order depends
on ``train.seed`` only, and flax draws every parameter from the seed and its path, so the
plain model's tensors equal the HRF model's tensors of the same name.

The primary endpoint is test UA of the final state (``test_last``); test UA of the
checkpoint chosen on validation UA is secondary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.grids import EPOCH_SCALE, RECIPES, VARIANTS, get_grid, run_config
from experiments.run import RESULTS, run_grid
from experiments.stats import contrast, scores_by_seed
from hrf_jax.config import apply_overrides
from hrf_jax.hugepages import exec_with_hugepages

DATASET = "synthetic_headroom"
GRID = f"{DATASET}_conformer"
BACKBONE = "conformer"  # the gate's and the first tiers' backbone
# the backbones of the later tiers: the same variants and contrasts, names prefixed
OTHER_BACKBONES = ("convtransformer", "speechformer")
RECIPE = "AdamW, lr 1e-3, 5 % warm-up, cosine to 1e-5, weight decay 1e-2, clip 1.0, batch 32"
# name -> (description, config overrides, epochs x the bed's): the recipes a tier is trained
# with. "adamw" (the grids' one recipe) is the first tiers'; "sgd" is item 5's SGD tier: the
# official SpeechFormer recipe's form (grids.RECIPES["speechformer_official"]) with a peak lr
# and length fixed on the plain light Conformer (seed 0: lr 1e-1 stayed at chance, 3e-2
# reached 26 % validation UA in the bed's 6 epochs and 51 % in 18; at 3e-2 plain light then
# sat at chance in 1 of 4 seeds, so 1e-2, which trained in all 4; results/
# hrf_study_reading.md). Its runs live in <workdir>/recipe_sgd.
SGD_LR = 1e-2
STUDY_RECIPES: dict[str, tuple[str, dict[str, Any], int]] = {
    "adamw": (RECIPE, {}, 1),
    "sgd": (f"SGD, momentum 0.9, lr {SGD_LR:g}, 5 % warm-up, cosine to lr/100, no weight "
            "decay, no clipping, batch 32",
            {**RECIPES["speechformer_official"], "optimizer.lr": SGD_LR}, 3),
}
# name -> the test bed: hrf-jax config overrides, each fixed with plain light and medium
# models only, before any HRF run on it (git history: the commit that added a bed precedes
# every HRF result on it), the stem of its results files and the bigger plain model of its
# gate: the medium model where the large config does not fit the bed's compute (2 CPU
# cores), the large config where it was trained on a GPU (chosen before its runs).
TESTBEDS: dict[str, dict[str, Any]] = {
    # 4,800 utterances, 48 speakers (the corpus's headroom defaults); gate (a) failed
    "headroom": {"overrides": {"train.max_frames": 160, "train.epochs": 6},
                 "results": "hrf_study", "gate_model": "medium"},
    # the same generator with 4x the utterances and 2x the speakers: 2,400 steps of 1.6 s
    # crops, so that the models stop over-fitting before capacity matters
    "headroom_4x": {"overrides": {"train.max_frames": 160, "train.epochs": 6,
                                  "dataset.num_utterances": 19200,
                                  "dataset.num_speakers": 96},
                    "results": "hrf_study_4x", "gate_model": "large"},
    # the 4x bed with words: 40 per class, half of an utterance's words from its class's
    # list (hrf_jax/data/synthetic.py), so that a model gains by learning a vocabulary of 240
    # acoustic patterns; gated with the medium model, which the CPU trains in 16-17 minutes
    "headroom_lexical": {"overrides": {"train.max_frames": 160, "train.epochs": 6,
                                       "dataset.num_utterances": 19200,
                                       "dataset.num_speakers": 96, "dataset.lexicon": 40},
                         "results": "hrf_study_lexical", "gate_model": "medium"},
}
# name -> (a, b): the contrast b - a in UA points, paired by seed
CONTRASTS = {
    "hrf4_vs_light": ("light", "light_hrf4"),
    "lr_control_vs_light": ("light", "light_lr5"),
    "hrf4_vs_lr_control": ("light_lr5", "light_hrf4"),
    "hrf4_fp_vs_light": ("light", "light_hrf4_fp"),
    "hrf4_scale_vs_light": ("light", "light_hrf4_scale"),
    "hrf4_nowd_vs_light": ("light", "light_hrf4_nowd"),
}
GATE = {"large_vs_light": 5.0, "light_vs_probe": 10.0, "oracle_vs_large": 5.0}  # points
MIN_GATE_SEEDS = 5


def bed_fields(testbed: str, backbone: str = BACKBONE, recipe: str = "adamw"
               ) -> dict[str, Any]:
    """The test bed's config fields for ``backbone`` and ``recipe``: a backbone whose recipe
    trains longer (``grids.EPOCH_SCALE``: SpeechFormer 3x) does so on the bed too, and a
    recipe of ``STUDY_RECIPES`` brings its own fields and length."""
    _, recipe_fields, recipe_scale = STUDY_RECIPES[recipe]
    fields = {**TESTBEDS[testbed]["overrides"], **recipe_fields}
    fields["train.epochs"] *= EPOCH_SCALE.get(backbone, 1) * recipe_scale
    return fields


def overrides(testbed: str, backbone: str = BACKBONE, recipe: str = "adamw") -> list[str]:
    return [f"--config.{k}={v}" for k, v in bed_fields(testbed, backbone, recipe).items()]


def recipe_workdir(workdir: Path, recipe: str) -> Path:
    """Where a recipe's runs live: the first tiers' at the top, others in a folder each."""
    return workdir if recipe == "adamw" else workdir / f"recipe_{recipe}"


def _prefix(backbone: str, recipe: str) -> str:
    """The first tiers' names as the issue gives them; later tiers prefixed by what differs."""
    return "".join(f"{p}_" for p, first in ((backbone, BACKBONE), (recipe, "adamw"))
                   if p != first)


def reading(testbed: str, results_dir: Path = RESULTS) -> Path:
    """The plain-language reading of a test bed's results, written by hand for its numbers."""
    return results_dir / f"{TESTBEDS[testbed]['results']}_reading.md"


def train(variants: Sequence[str], seeds: Sequence[int], workdir: Path,
          testbed: str = "headroom", backbone: str = BACKBONE, recipe: str = "adamw") -> None:
    """Every missing (variant, seed) cell of ``backbone`` and ``recipe``, seed-major."""
    grid = get_grid(f"{DATASET}_{backbone}")
    grid.variants = tuple(variants)
    for seed in seeds:
        grid.seeds = (seed,)
        run_grid(grid, recipe_workdir(workdir, recipe), overrides(testbed, backbone, recipe))


def prepare_bed(testbed: str, workers: int) -> Path:
    """Prepares the test bed's corpus (its ``dataset.*`` overrides) under ``$HRF_JAX_DATA``,
    so that runs started at once find it ready instead of each preparing it."""
    from hrf_jax.data import ensure_prepared

    options = {k.removeprefix("dataset."): v for k, v in TESTBEDS[testbed]["overrides"].items()
               if k.startswith("dataset.")}
    return ensure_prepared(DATASET, workers=workers, **options)


def collect(workdir: Path, testbed: str = "headroom") -> dict[str, Any]:
    """The finished cells of every backbone, recipe and variant (``experiments.run``'s result
    dict, each cell with its ``recipe``)."""
    result: dict[str, Any] = {}
    for recipe in STUDY_RECIPES:
        for backbone in (BACKBONE, *OTHER_BACKBONES):
            grid = get_grid(f"{DATASET}_{backbone}")
            grid.variants = tuple(VARIANTS)
            grid.seeds = tuple(range(100))
            where = recipe_workdir(workdir, recipe)
            if not where.is_dir():
                continue
            found = run_grid(grid, where, overrides(testbed, backbone, recipe),
                             collect_only=True)
            found["cells"] = [{**cell, "recipe": recipe} for cell in found["cells"]]
            if not result:
                result = found
            else:
                result["cells"] += found["cells"]
    return result


def _of_recipe(result: dict, recipe: str) -> dict:
    return {**result, "cells": [c for c in result["cells"]
                                if c.get("recipe", "adamw") == recipe]}


def reference_classifiers(workdir: Path, testbed: str = "headroom") -> dict[str, Any]:
    """Probe and oracle test UA on the test bed, cached next to the runs (about 2 min)."""
    cache = workdir / "synthetic_headroom" / f"reference_classifiers_{testbed}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from experiments.testbed import oracle_ua, probe_ua
    from hrf_jax.data.registry import get_corpus
    from hrf_jax.data.synthetic import SyntheticConfig
    from hrf_jax.run import open_dataset

    config = run_config(get_grid(GRID), BACKBONE, "light", -1, 0)
    apply_overrides(config, overrides(testbed))
    ds = open_dataset(config.dataset, prepare=True)
    # the prepared corpus's options: the registry's defaults and what was set otherwise
    options = {**get_corpus(config.dataset.name).options,
               **json.loads((ds.path / "hrf_options.json").read_text())["options"]}
    synthetic = SyntheticConfig(preset="headroom", **{
        k: v for k, v in options.items() if k in SyntheticConfig.__dataclass_fields__})
    refs = {"probe": probe_ua(ds), "oracle": oracle_ua(ds, synthetic),
            "corpus_options": options}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(refs, indent=2))
    return refs


def _contrast_entry(result: dict, a: str, b: str, name: str, min_seeds: int = 2,
                    backbone: str = BACKBONE, testbed: str = "headroom",
                    recipe: str = "adamw") -> dict[str, Any] | None:
    """The contrast ``b - a`` of ``recipe``'s runs on the seeds both ran (None below
    ``min_seeds``)."""
    result = _of_recipe(result, recipe)
    epochs = bed_fields(testbed, backbone, recipe)["train.epochs"]
    entry: dict[str, Any] = {"backbone": backbone,
                             "recipe": f"{STUDY_RECIPES[recipe][0]}, {epochs} epochs",
                             "a": a, "b": b}
    for endpoint, key in (("test_last", "primary"), ("test", "secondary")):
        sa = scores_by_seed(result, backbone, a, endpoint=endpoint)
        sb = scores_by_seed(result, backbone, b, endpoint=endpoint)
        common = sorted(set(sa) & set(sb))
        if len(common) < min_seeds:
            return None
        c = contrast(name, {s: sa[s] for s in common}, {s: sb[s] for s in common})
        entry[key] = {"endpoint": endpoint, "seeds": list(c.seeds),
                      "delta_ua": [round(x, 4) for x in c.diffs], "mean": c.mean,
                      "ci95": list(c.ci), "p_wilcoxon": c.p_wilcoxon,
                      "p_tost_1pt": None if np.isnan(c.p_tost) else c.p_tost,
                      "a_ua": [sa[s] for s in common], "b_ua": [sb[s] for s in common]}
    # the issue's field names at the top level: the primary endpoint
    entry.update({k: entry["primary"][k] for k in
                  ("seeds", "delta_ua", "mean", "ci95", "p_wilcoxon")})
    return entry


def gate(result: dict, refs: dict, testbed: str = "headroom") -> dict[str, Any]:
    result = _of_recipe(result, "adamw")  # the bed was fixed with the first tiers' recipe
    gate_model = TESTBEDS[testbed]["gate_model"]
    light = scores_by_seed(result, BACKBONE, "light", endpoint="test_last")
    big = scores_by_seed(result, BACKBONE, gate_model, endpoint="test_last")
    arch = VARIANTS[gate_model].get("arch")
    out: dict[str, Any] = {"model": gate_model if arch is None else f"{gate_model} (light, {arch})",
                           "variant": gate_model, "thresholds_points": GATE}
    # listed from one seed on, so a gate short of seeds still shows what it has
    paired = _contrast_entry(result, "light", gate_model, "large_vs_light", min_seeds=1,
                             testbed=testbed)
    if paired is not None:
        out["large_vs_light"] = {**paired, "pass": bool(
            paired["mean"] >= GATE["large_vs_light"] and paired["ci95"][0] > 0
            and len(paired["seeds"]) >= MIN_GATE_SEEDS)}
    # the large config where it was run on a bed that gates with medium: shown beside the
    # gate, not part of it
    large = None if gate_model == "large" else _contrast_entry(
        result, "light", "large", "large_config_vs_light", min_seeds=1, testbed=testbed)
    if large is not None:
        out["large_config_vs_light"] = large
    probe, oracle = 100 * refs["probe"]["ua"], 100 * refs["oracle"]["ua"]
    if light:
        light_mean = float(np.mean(list(light.values())))
        out["light_vs_probe"] = {"light_ua": light_mean, "probe_ua": probe,
                                 "diff": light_mean - probe,
                                 "pass": light_mean - probe >= GATE["light_vs_probe"]}
    if big:
        big_mean = float(np.mean(list(big.values())))
        out["oracle_vs_large"] = {"oracle_ua": oracle, "large_ua": big_mean,
                                  "diff": oracle - big_mean,
                                  "pass": oracle - big_mean >= GATE["oracle_vs_large"]}
    out["passed"] = all(out.get(k, {}).get("pass", False) for k in GATE)
    return out


def report(workdir: Path, results_dir: Path, testbed: str = "headroom") -> dict[str, Any]:
    result = collect(workdir, testbed)
    refs = reference_classifiers(workdir, testbed)
    contrasts = {}
    for recipe in STUDY_RECIPES:
        for backbone in (BACKBONE, *OTHER_BACKBONES):
            for name, (a, b) in CONTRASTS.items():
                key = _prefix(backbone, recipe) + name
                entry = _contrast_entry(result, a, b, key, backbone=backbone,
                                        testbed=testbed, recipe=recipe)
                if entry is not None:
                    contrasts[key] = entry
    runs: dict[str, list[int]] = {}
    for cell in result["cells"]:
        name = _prefix(cell["backbone"], cell.get("recipe", "adamw")) + cell["variant"]
        runs.setdefault(name, []).append(cell["seed"])
    study = {
        "command": " ".join(["python -m experiments.hrf_study", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git_head(),
        "machine": {**result["machine"], "cpus": os.cpu_count(),
                    "processor": platform.processor()},
        "testbed": {"name": testbed, "grid": GRID, "recipe": RECIPE,
                    "overrides": TESTBEDS[testbed]["overrides"],
                    "corpus_options": refs["corpus_options"]},
        "gate": gate(result, refs, testbed),
        "reference_classifiers": {k: refs[k] for k in ("probe", "oracle")},
        "runs": {k: sorted(v) for k, v in runs.items()},
        "contrasts": contrasts,
        "cells": result["cells"],
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = TESTBEDS[testbed]["results"]
    (results_dir / f"{stem}.json").write_text(json.dumps(study, indent=2) + "\n")
    (results_dir / f"{stem}.md").write_text(markdown(study, reading(testbed, results_dir)))
    return study


def git_head() -> str:
    """The checkout's short commit hash, written beside results; "" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def markdown(study: dict, reading_file: Path | None = None) -> str:
    g = study["gate"]
    lines = ["# The HRF study (issue #13): light models on the headroom test bed", "",
             f"Command: `{study['command']}` at commit {study['commit']}, {study['date']}; "
             f"{study['machine']['cpus']} CPUs, {study['machine']['platform']}, "
             f"jax {study['machine']['jax']}.  ",
             f"Test bed `{study['testbed'].get('name', 'headroom')}`: grid "
             f"`{study['testbed']['grid']}`, {study['testbed']['recipe']}, "
             f"overrides {study['testbed']['overrides']}.  ",
             "UA in points; primary endpoint: test UA of the final state; secondary: test UA "
             "of the checkpoint chosen on validation UA. Contrasts are b - a, paired by seed; "
             "95 % CI: percentile bootstrap of the mean (10,000 resamples); Wilcoxon: exact "
             "two-sided signed-rank; TOST: paired t, equivalence margin ±1 point. "
             "Unprefixed contrasts are the Conformer's with the AdamW recipe; a backbone or "
             "recipe prefix names a later tier (its recipe, with its epochs, is in the "
             "JSON).", "",
             "## Gate", "", "| check | value | threshold | pass |", "|---|---|---|---|"]
    if "large_vs_light" in g:
        e = g["large_vs_light"]
        lines.append(f"| {g['model']} - light ({len(e['seeds'])} seeds) | {e['mean']:+.2f} "
                     f"[{e['ci95'][0]:+.2f}, {e['ci95'][1]:+.2f}] | >= "
                     f"{g['thresholds_points']['large_vs_light']:g}, CI > 0, >= "
                     f"{MIN_GATE_SEEDS} seeds | {e['pass']} |")
    if "large_config_vs_light" in g:
        e = g["large_config_vs_light"]
        n = len(e["seeds"])
        lines.append(f"| large config - light ({n} seed{'s' * (n > 1)}; not a gate check) | "
                     f"{e['mean']:+.2f} | - | - |")
    if "light_vs_probe" in g:
        e = g["light_vs_probe"]
        lines.append(f"| light ({e['light_ua']:.2f}) - mean+std probe ({e['probe_ua']:.2f}) | "
                     f"{e['diff']:+.2f} | >= {g['thresholds_points']['light_vs_probe']:g} | "
                     f"{e['pass']} |")
    if "oracle_vs_large" in g:
        e = g["oracle_vs_large"]
        lines.append(f"| oracle ({e['oracle_ua']:.2f}) - {g['variant']} ({e['large_ua']:.2f}) | "
                     f"{e['diff']:+.2f} | >= {g['thresholds_points']['oracle_vs_large']:g} | "
                     f"{e['pass']} |")
    lines += ["", f"Gate passed: **{g['passed']}**", "", "## Contrasts", "",
              "| contrast | endpoint | n | mean (points) | 95 % CI | Wilcoxon p | TOST p | "
              "per-seed deltas |", "|---|---|---|---|---|---|---|---|"]
    for name, c in study["contrasts"].items():
        for key in ("primary", "secondary"):
            e = c[key]
            deltas = ", ".join(f"{x:+.1f}" for x in e["delta_ua"])
            lines.append(f"| {name} ({c['b']} - {c['a']}) | {e['endpoint']} | "
                         f"{len(e['seeds'])} | {e['mean']:+.2f} | [{e['ci95'][0]:+.2f}, "
                         f"{e['ci95'][1]:+.2f}] | {e['p_wilcoxon']:.3g} | "
                         f"{_p(e['p_tost_1pt'])} | {deltas} |")
    lines += ["", "Runs per variant (seeds): " + "; ".join(
        f"{k}: {len(v)}" for k, v in study["runs"].items()), ""]
    if reading_file is not None and reading_file.is_file():
        lines += ["## Reading", "", reading_file.read_text().strip(), ""]
    return "\n".join(lines)


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run the missing cells, seed by seed")
    t.add_argument("--variants", nargs="+", required=True, choices=sorted(VARIANTS))
    t.add_argument("--seeds", type=int, nargs="+", required=True)
    t.add_argument("--backbone", choices=(BACKBONE, *OTHER_BACKBONES), default=BACKBONE)
    t.add_argument("--recipe", choices=sorted(STUDY_RECIPES), default="adamw",
                   help="the training recipe of the tier (STUDY_RECIPES)")
    pr = sub.add_parser("prepare", help="prepare the test bed's corpus (once, before train)")
    pr.add_argument("--testbed", choices=sorted(TESTBEDS), default="headroom")
    pr.add_argument("--workers", type=int, default=2, help="feature-extraction processes")
    r = sub.add_parser("report", help="write results/<stem>.{json,md} of the test bed")
    r.add_argument("--results-dir", type=Path, default=RESULTS)
    for p in (t, r):
        p.add_argument("--workdir", type=Path, default=Path("runs/experiments"))
        p.add_argument("--testbed", choices=sorted(TESTBEDS), default="headroom")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(prepare_bed(args.testbed, args.workers))
    elif args.command == "train":
        train(args.variants, args.seeds, args.workdir, args.testbed, args.backbone,
              args.recipe)
    else:
        study = report(args.workdir, args.results_dir, args.testbed)
        print(markdown(study, reading(args.testbed, args.results_dir)))
    return 0


if __name__ == "__main__":
    exec_with_hugepages()
    sys.exit(main())
