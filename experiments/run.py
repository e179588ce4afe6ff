"""Runs an experiment grid (all folds and seeds), resumably, and writes its results table.

    python -m experiments.run synthetic_all --seeds 0 1 2
    python -m experiments.run iemocap_conformer --manual-dir /data/IEMOCAP_full_release
    python -m experiments.run synthetic_all --seeds 0 1 2 3 --population 4   # on a GPU

Each cell trains in ``<workdir>/<dataset>/<backbone>/<variant>/fold<k>/seed<s>``; a finished cell
(``final.json`` present) is skipped and an interrupted one resumes from its checkpoint. The
summary goes to ``experiments/results/<grid>.json`` and ``.md`` (WA and UA mean +- std over
folds x seeds, test metrics of the checkpoint chosen on validation data).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax

from experiments.grids import VARIANTS, get_grid, run_config
from hrf_jax.config import apply_overrides
from hrf_jax.hugepages import exec_with_hugepages
from hrf_jax.loop import fit
from hrf_jax.metrics import mean_std
from hrf_jax.population_loop import fit_population
from hrf_jax.run import FINAL, check_same_run

RESULTS = Path(__file__).resolve().parent / "results"


def run_grid(grid, workdir: Path, overrides: Sequence[str] = (),
             collect_only: bool = False, population: int = 1) -> dict:
    """Trains every missing cell (or, with ``collect_only``, only gathers finished ones);
    ``population > 1`` trains a cell's seeds that many at a time in one vmapped step."""
    cells = []
    for backbone in grid.backbones:
        for variant in grid.variants:
            for fold in grid.folds:
                if population > 1 and not collect_only:
                    _train_populations(grid, workdir, overrides, backbone, variant, fold,
                                       population)
                for seed in grid.seeds:
                    config = run_config(grid, backbone, variant, fold, seed)
                    apply_overrides(config, overrides)
                    # keyed by dataset, not grid: grids that share cells share their runs
                    where = (workdir / grid.base.dataset.name / backbone / variant
                             / f"fold{fold}" / f"seed{seed}")
                    if (where / FINAL).is_file():
                        # a finished run of another corpus or model (another test bed in the
                        # same workdir) must not be read as this cell's
                        check_same_run(where, config)
                        summary = json.loads((where / FINAL).read_text())
                    elif collect_only:
                        continue
                    else:
                        print(f"== {backbone} {variant} fold {fold} seed {seed} -> {where}",
                              flush=True)
                        t0 = time.perf_counter()
                        summary = fit(config, where)
                        summary["seconds"] = time.perf_counter() - t0
                        (where / FINAL).write_text(json.dumps(summary, indent=2))
                    cells.append({"backbone": backbone, "variant": variant, "fold": fold,
                                  "seed": seed, "test": _scores(summary["test"]),
                                  "validation": _scores(summary["validation"]),
                                  "test_last": _scores(summary.get("test_last")),
                                  "train_acc_last": summary["history"][-1]["train_acc"],
                                  "seconds": summary.get("seconds")})
    return summarise(grid, cells)


def _train_populations(grid, workdir: Path, overrides: Sequence[str], backbone: str,
                       variant: str, fold: int, k: int) -> None:
    """The unfinished seeds of one cell, K at a time, each group by ``fit_population`` (its
    members' folders are ordinary runs: ``run_grid``'s seed loop then reads them)."""
    todo = []
    for seed in grid.seeds:
        where = (workdir / grid.base.dataset.name / backbone / variant
                 / f"fold{fold}" / f"seed{seed}")
        if not (where / FINAL).is_file():
            config = run_config(grid, backbone, variant, fold, seed)
            apply_overrides(config, overrides)
            todo.append((seed, config, where))
    for start in range(0, len(todo), k):
        group = todo[start:start + k]
        print(f"== {backbone} {variant} fold {fold} seeds {[s for s, _, _ in group]} "
              f"(population) -> {group[0][2].parent}", flush=True)
        t0 = time.perf_counter()
        summaries = fit_population([c for _, c, _ in group], [w for _, _, w in group])
        seconds = (time.perf_counter() - t0) / len(group)  # each member's share
        for (_, _, where), summary in zip(group, summaries, strict=True):
            summary["seconds"], summary["population"] = seconds, len(group)
            (where / FINAL).write_text(json.dumps(summary, indent=2))


def _scores(metrics: dict | None) -> dict | None:
    if metrics is None:
        return None
    keys = ("wa", "ua", "macro_f1", "weighted_f1")
    out = {k: metrics[k] for k in keys}
    if "participant" in metrics:
        out["participant_macro_f1"] = metrics["participant"]["macro_f1"]
    return out


def summarise(grid, cells: list[dict]) -> dict:
    rows = []
    for backbone in grid.backbones:
        for variant in grid.variants:
            mine = [c for c in cells if c["backbone"] == backbone and c["variant"] == variant]
            if not mine:
                continue
            row = {"backbone": backbone, "variant": variant, "runs": len(mine),
                   "hrf_ratio": VARIANTS[variant]["hrf_ratio"]}
            for key in ("wa", "ua", "macro_f1"):
                row[key] = mean_std([c["test"][key] for c in mine])
            rows.append(row)
    return {
        "grid": grid.name,
        "dataset": grid.base.dataset.name,
        "machine": {"platform": platform.platform(), "devices": [str(d) for d in jax.devices()],
                    "python": sys.version.split()[0], "jax": jax.__version__},
        "command": " ".join(sys.argv),
        "rows": rows,
        "cells": cells,
    }


def markdown(result: dict) -> str:
    # the controls of issue #13 say what differs from their reference variant
    label = {"light": "light", "large": "large", "medium": "medium (light, d_model 96)",
             "light_lr5": "light, fc1 lr x5 (lr control)",
             "light_hrf4_fp": "light + HRF x4, function-preserving init",
             "light_hrf4_nowd": "light + HRF x4, no decay on HRF",
             "light_hrf4_scale": "light + HRF x4, scale in the chain"}
    lines = [f"### {result['grid']} (test split; mean ± std over folds × seeds)", "",
             "| backbone | model | runs | WA (%) | UA (%) | macro-F1 (%) |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        name = label.get(row["variant"], f"light + HRF x{row['hrf_ratio']}")
        cells = " | ".join(f"{100 * row[k][0]:.2f} ± {100 * row[k][1]:.2f}"
                           for k in ("wa", "ua", "macro_f1"))
        lines.append(f"| {row['backbone']} | {name} | {row['runs']} | {cells} |")
    devices = ", ".join(result["machine"]["devices"])
    lines += ["", f"Command: `{result['command']}`  ", f"Machine: {devices}; "
              f"{result['machine']['platform']}; jax {result['machine']['jax']}"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", help="e.g. synthetic_all, iemocap_conformer, daic_woz_speechformer")
    parser.add_argument("--workdir", default="runs/experiments", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--variants", nargs="+", default=None, choices=sorted(VARIANTS))
    parser.add_argument("--manual-dir", default="", help="the corpus as distributed")
    parser.add_argument("--manifest", default="", help="M3ED / csv manifest")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--results-dir", default=RESULTS, type=Path)
    parser.add_argument("--name", default=None, help="results file name (default: the grid)")
    parser.add_argument("--collect-only", action="store_true",
                        help="tabulate finished cells only; train nothing")
    parser.add_argument("--population", type=int, default=1, metavar="K",
                        help="train a cell's seeds K at a time in one vmapped step "
                             "(fit_population); 1: one after another (the default: on CPU "
                             "a population is not faster, BENCHMARKS.md)")
    args, overrides = parser.parse_known_args(argv)
    if args.population < 1:
        parser.error("--population must be at least 1")
    grid = get_grid(args.grid)
    if args.seeds:
        grid.seeds = tuple(args.seeds)
    if args.variants:
        grid.variants = tuple(args.variants)
    grid.base.dataset.manual_dir = args.manual_dir
    grid.base.dataset.manifest = args.manifest
    grid.base.dataset.data_dir = args.data_dir
    result = run_grid(grid, args.workdir, overrides, collect_only=args.collect_only,
                      population=args.population)
    grid.name = args.name or grid.name
    result["grid"] = grid.name
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{grid.name}.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.results_dir / f"{grid.name}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    exec_with_hugepages()
    sys.exit(main())
