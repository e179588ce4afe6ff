"""Do the baselines train? (issue #13, item 2): probes of the grids' recipe per backbone and
size on the synthetic corpus, and two checks of how a run that fails has failed.

    python -m experiments.baselines train --probes sf_light sf_light_e8 --seeds 0 1 2
    python -m experiments.baselines report      # results/baselines.json and .md

Each probe is one ``experiments.run`` cell (grid, variant) with config overrides, run in
``<workdir>/<probe>`` and resumed from its checkpoint. ``report`` lists per probe and seed the
final-state test UA, the last epoch's training accuracy, and two checks of the final state on
the first 16 test utterances (3 s crops, or the training crop where shorter):

- ``dead_head_units``: SpeechFormer's MLP head (d -> d/2 -> d/4 ReLU units -> classes): the
  units that are zero for all 16 utterances; when every unit of a layer is dead the logits are
  constant and the model sits at chance for good.
- ``frame_cosine``: the mean cosine similarity of 200 random pairs of encoder output frames
  across the 16 utterances. Deep attention stacks pull frames together (rank collapse; Dong et
  al., ICML 2021), post-LN ones most; at 1.0 every frame of every utterance is the same vector
  and the linear head sees one input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.grids import RECIPES, get_grid
from experiments.hrf_study import overrides as bed_overrides
from experiments.run import RESULTS, run_grid
from hrf_jax.hugepages import exec_with_hugepages

# probe -> (grid, variant, overrides) on the grids' recipe (AdamW, lr 1e-3, 5 % warm-up,
# cosine, weight decay 1e-2, 8 epochs) with its per-model needs (grids.BASELINE_RECIPES,
# grids.EPOCH_SCALE); a probe named for an earlier recipe overrides it back
EPOCHS_8 = "--config.train.epochs=8"  # the grids' epochs before SpeechFormer's were tripled
# the HRF study's headroom bed (1.6 s crops, 6 epochs) for the ConvTransformer light, and the
# model's own default, post-LN, that the grids ran before this diagnosis
CT_BED = tuple(bed_overrides("headroom", "convtransformer"))
POST_LN = "--config.model.arch="
SF_BED = tuple(bed_overrides("headroom", "speechformer"))  # 18 epochs: SpeechFormer's 3x
SF_OFFICIAL = tuple(f"--config.{k}={v}" for k, v in RECIPES["speechformer_official"].items())
PROBES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "sf_light": ("synthetic_speechformer", "light", ()),  # 24 epochs since this diagnosis
    "sf_light_e8": ("synthetic_speechformer", "light", (EPOCHS_8,)),
    "sf_light_e8_head32": ("synthetic_speechformer", "light",
                           (EPOCHS_8, "--config.model.arch=head_min_width=32")),
    "sf_light_e8_heads4": ("synthetic_speechformer", "light",
                           (EPOCHS_8, "--config.model.arch=num_heads=4")),
    "sf_light_e8_lr3e-3": ("synthetic_speechformer", "light",
                           (EPOCHS_8, "--config.optimizer.lr=3e-3")),
    "ct_large": ("synthetic_convtransformer", "large", ()),  # pre-LN since this diagnosis
    "ct_large_post_ln": ("synthetic_convtransformer", "large",
                         (POST_LN,)),  # the model default
    "ct_light_headroom": ("synthetic_headroom_convtransformer", "light", CT_BED),  # pre-LN
    "ct_light_headroom_post_ln": ("synthetic_headroom_convtransformer", "light",
                                  (*CT_BED, POST_LN)),
    "ct_light_headroom_post_ln_e18": ("synthetic_headroom_convtransformer", "light",
                                      (*CT_BED, POST_LN, "--config.train.epochs=18")),
    "ct_light_headroom_post_ln_lr3e-3": ("synthetic_headroom_convtransformer", "light",
                                         (*CT_BED, POST_LN, "--config.optimizer.lr=3e-3")),
    "sf_light_headroom": ("synthetic_headroom_speechformer", "light", SF_BED),
    "sf_light_headroom_lr3e-4": ("synthetic_headroom_speechformer", "light",
                                 (*SF_BED, "--config.optimizer.lr=3e-4")),
    "sf_light_headroom_official": ("synthetic_headroom_speechformer", "light",
                                   (*SF_BED, *SF_OFFICIAL)),
    "cf_large": ("synthetic_conformer", "large", ()),  # lr 3e-4, 10 % warm-up since then
    "cf_large_lr1e-3": ("synthetic_conformer", "large",
                        ("--config.optimizer.lr=1e-3", "--config.optimizer.warmup_fraction=0.05")),
}
CHECK_UTTERANCES, CHECK_FRAMES, COSINE_PAIRS = 16, 300, 200
READING = "baselines_reading.md"


def _grid(probe: str, seeds: Sequence[int]) -> Any:
    name, variant, _ = PROBES[probe]
    grid = get_grid(name)
    grid.variants, grid.seeds = (variant,), tuple(seeds)
    return grid


def train(probes: Sequence[str], seeds: Sequence[int], workdir: Path) -> None:
    for probe in probes:
        run_grid(_grid(probe, seeds), workdir / probe, list(PROBES[probe][2]))


def final_state_checks(run_dir: Path) -> dict[str, Any]:
    """``dead_head_units`` (SpeechFormer) and ``frame_cosine`` (Conformer, ConvTransformer: the
    models that expose their encoder output) of a finished run's last state, on the first
    test utterances of at least 3 s (or the run's training crop where shorter), cropped to
    that length (no padding anywhere)."""
    from hrf_jax.run import Run

    run = Run.load(run_dir)
    frames = min(CHECK_FRAMES, run.config.train.max_frames or CHECK_FRAMES)
    test = run.dataset().test
    crops = []
    for i in range(len(test)):
        x = test[i]["feats"]
        if len(x) >= frames:
            crops.append(x[:frames])
        if len(crops) == CHECK_UTTERANCES:
            break
    if not crops:
        raise ValueError(f"{run_dir}: no test utterance has {frames} frames to check")
    feats = np.stack(crops)
    _, state = run.model().apply(run.variables("last"), feats, np.ones(feats.shape[:2], bool),
                                 capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"]
    out: dict[str, Any] = {"utterances": len(crops), "frames": frames}
    heads = {name: np.asarray(inter[name]["__call__"][0]) for name in ("head_0", "head_1")
             if name in inter}
    if heads:  # ReLU(Dense(x)) units that are zero for every utterance
        out["dead_head_units"] = {name: f"{int((np.maximum(a, 0) == 0).all(0).sum())}/"
                                  f"{a.shape[-1]}" for name, a in heads.items()}
    if "encoder_out" in inter:
        frames = np.asarray(inter["encoder_out"][0]).reshape(-1, inter["encoder_out"][0].shape[-1])
        frames = frames / np.maximum(np.linalg.norm(frames, axis=1, keepdims=True), 1e-12)
        a, b = np.random.default_rng(0).choice(len(frames), (2, COSINE_PAIRS))
        out["frame_cosine"] = float(np.mean(np.sum(frames[a] * frames[b], -1)))
    return out


def report(workdir: Path, results_dir: Path) -> dict[str, Any]:
    rows, machine = [], {}
    for probe, (grid_name, variant, overrides) in PROBES.items():
        if not (workdir / probe).is_dir():
            continue
        grid = _grid(probe, range(100))
        result = run_grid(grid, workdir / probe, list(overrides), collect_only=True)
        machine = result["machine"]
        for cell in result["cells"]:
            run_dir = (workdir / probe / grid.base.dataset.name / cell["backbone"] / variant
                       / f"fold{cell['fold']}" / f"seed{cell['seed']}")
            final = json.loads((run_dir / "final.json").read_text())
            history = final["history"]
            rows.append({
                "probe": probe, "grid": grid_name, "variant": variant,
                "overrides": list(overrides), "seed": cell["seed"],
                "epochs": len(history), "test_ua": final["test_last"]["ua"],
                "train_acc": history[-1]["train_acc"],
                "val_ua_by_epoch": [round(h["val"]["ua"], 4) for h in history],
                "at_chance": bool(np.isclose(final["test_last"]["ua"],
                                             1 / len(final["class_names"]))),
                **final_state_checks(run_dir)})
    out = {"command": " ".join(["python -m experiments.baselines", *sys.argv[1:]]),
           "machine": machine, "rows": rows}
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "baselines.json").write_text(json.dumps(out, indent=2) + "\n")
    (results_dir / "baselines.md").write_text(markdown(out, results_dir / READING))
    return out


def markdown(out: dict[str, Any], reading_file: Path) -> str:
    lines = ["# Do the baselines train? (issue #13, item 2)", "",
             f"Command: `{out['command']}`; per probe and seed: final-state test UA, last "
             "epoch's training accuracy, and the checks of the final state "
             "(`experiments/baselines.py`).", "",
             "| probe | seed | epochs | test UA (%) | train acc (%) | at chance | dead head "
             "units | frame cosine |", "|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        dead = ", ".join(f"{k} {v}" for k, v in r.get("dead_head_units", {}).items()) or "-"
        cosine = f"{r['frame_cosine']:.3f}" if "frame_cosine" in r else "-"
        lines.append(f"| {r['probe']} | {r['seed']} | {r['epochs']} | {100 * r['test_ua']:.2f} "
                     f"| {100 * r['train_acc']:.1f} | {r['at_chance']} | {dead} | {cosine} |")
    if reading_file.is_file():  # the plain-language reading, written for these numbers
        lines += ["", "## Reading", "", reading_file.read_text().strip()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run the missing cells of the probes")
    t.add_argument("--probes", nargs="+", required=True, choices=sorted(PROBES))
    t.add_argument("--seeds", type=int, nargs="+", required=True)
    r = sub.add_parser("report", help="write results/baselines.{json,md}")
    r.add_argument("--results-dir", type=Path, default=RESULTS)
    for p in (t, r):
        p.add_argument("--workdir", type=Path, default=Path("runs/baselines"))
    args = parser.parse_args(argv)
    if args.command == "train":
        train(args.probes, args.seeds, args.workdir)
    else:
        report(args.workdir, args.results_dir)
        print((args.results_dir / "baselines.md").read_text())
    return 0


if __name__ == "__main__":
    exec_with_hugepages()
    sys.exit(main())
