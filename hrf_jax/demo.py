"""The main job: light, light+HRF and large models on the synthetic corpus, then deHRF.

Trains the three with the same recipe and seed, merges the HRF model into the plain light
model, checks that the merged model predicts exactly as the HRF model, evaluates all on the
test split, and writes ``<workdir>/results.json`` plus a printed table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from hrf_jax.config import LARGE_MODEL_OPTIMIZER, default_config
from hrf_jax.deploy import merge_run
from hrf_jax.evaluate import split_probs
from hrf_jax.logs import get_logger
from hrf_jax.loop import fit
from hrf_jax.metrics import bootstrap_ua_ci, classification_metrics
from hrf_jax.profiling import forward_cost
from hrf_jax.reparam import count_params
from hrf_jax.run import Run
from hrf_jax.train import DataParallel, make_eval_step

THREE_SECONDS = 300  # frames at a 10 ms hop
# where the evidence on HRF lives (the demo is one seed of one setting)
STUDY_POINTER = ("experiments/results/hrf_study.md (Conformer light, 10 seeds per variant, "
                 "paired, with the lr control and the test bed's gate)")


def demo_config(backbone: str, size: str, hrf_ratio: int, *, epochs: int, seed: int,
                num_utterances: int, num_speakers: int, batch_size: int, max_frames: int,
                data_dir: str, progress: bool):
    """The shared recipe: the runs differ in the model size and the HRF ratio, and the large
    model gets the large models' optimizer (``LARGE_MODEL_OPTIMIZER``: at the light models'
    peak learning rate a large Conformer diverges or trails light)."""
    config = default_config()
    config.dataset.data_dir = data_dir
    config.dataset.num_utterances = num_utterances
    config.dataset.num_speakers = num_speakers
    config.train.batch_size = batch_size
    config.model.backbone = backbone
    config.model.size = size
    config.model.hrf_ratio = hrf_ratio
    if size == "large":
        config.optimizer.update(LARGE_MODEL_OPTIMIZER)
    config.train.epochs = epochs
    config.train.seed = seed
    config.train.max_frames = max_frames
    config.train.progress = progress
    return config


def run_demo(workdir: str | Path = "runs/demo", *, backbone: str = "conformer",
             hrf_ratio: int = 4, epochs: int = 6, seed: int = 0, num_utterances: int = 960,
             num_speakers: int = 0, batch_size: int = 32, max_frames: int = 160,
             data_dir: str = "", progress: bool = True) -> dict[str, Any]:
    """Runs the main job and returns the ``results.json`` content.

    The defaults (960 synthetic utterances, 6 epochs, 1.6 s crops) keep the three trainings,
    the large model included, within 10 minutes on a 2-core CPU."""
    workdir = Path(workdir)
    started = time.perf_counter()
    runs = {"light": ("light", 0), "light_hrf": ("light", hrf_ratio), "large": ("large", 0)}
    summaries = {}
    for name, (size, ratio) in runs.items():
        get_logger().info(f"== training {name}: {backbone}-{size}"
                          + (f" + HRF x{ratio}" if ratio else ""))
        config = demo_config(backbone, size, ratio, epochs=epochs, seed=seed,
                             num_utterances=num_utterances, num_speakers=num_speakers,
                             batch_size=batch_size, max_frames=max_frames,
                             data_dir=data_dir, progress=progress)
        summaries[name] = fit(config, workdir / name)

    get_logger().info("== merging light_hrf (deHRF) and verifying")
    merge = merge_run(workdir / "light_hrf")
    hrf_run = Run.load(workdir / "light_hrf")
    deploy_run = Run.load(hrf_run.deploy_dir)
    ds = hrf_run.dataset()
    parallel = DataParallel()

    hrf_vars, deploy_vars = hrf_run.variables("best"), deploy_run.variables("deploy")

    def test_probs(run: Run, variables: dict) -> np.ndarray:
        return split_probs(make_eval_step(run.model(), parallel), variables, ds.test,
                           parallel, run.num_classes, batch_size=32)

    p_hrf, p_merged = test_probs(hrf_run, hrf_vars), test_probs(deploy_run, deploy_vars)
    identical = float(np.mean(p_hrf.argmax(-1) == p_merged.argmax(-1)))
    merged_metrics = classification_metrics(ds.test.labels, p_merged.argmax(-1),
                                            deploy_run.num_classes)

    models: dict[str, Any] = {}
    for name in ("light", "large"):
        run = Run.load(workdir / name)
        variables = run.variables("best")
        models[name] = _row(summaries[name]["test"], run, variables,
                            test_probs(run, variables), ds.test.labels)
    models["light_hrf"] = _row(summaries["light_hrf"]["test"], hrf_run, hrf_vars, p_hrf,
                               ds.test.labels)
    models["light_hrf_merged"] = _row(merged_metrics, deploy_run, deploy_vars, p_merged,
                                      ds.test.labels)
    results = {
        "dataset": hrf_run.config.dataset.name,
        "backbone": backbone,
        "models": {k: models[k] for k in ("light", "light_hrf", "light_hrf_merged", "large")},
        "merge": {"max_abs_err": float(np.max(np.abs(p_hrf - p_merged))),
                  "logit_max_abs_err": merge["equivalence"]["max_abs_err"],
                  "predictions_identical": identical},
        "seconds": time.perf_counter() - started,
    }
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(render_table(results))
    print(f"results: {workdir / 'results.json'}; deploy checkpoint: "
          f"{workdir / 'light_hrf' / 'deploy'}; wall time {results['seconds']:.0f} s")
    return results


def _row(metrics: dict, run: Run, variables: dict, probs: np.ndarray, labels: np.ndarray
         ) -> dict[str, Any]:
    cost = forward_cost(run.model(), variables, THREE_SECONDS, run.feature_dim)
    return {"wa": metrics["wa"], "ua": metrics["ua"], "macro_f1": metrics["macro_f1"],
            "ua_ci95": list(bootstrap_ua_ci(labels, probs.argmax(-1), run.num_classes)),
            "params": count_params(variables["params"]), "flops": cost["flops"],
            "latency_ms": cost["latency_ms"]}


def render_table(results: dict[str, Any]) -> str:
    """Markdown table of the demo's ``results.json``."""
    lines = [f"{results['backbone']} on {results['dataset']} (test split)", "",
             "| model | WA | UA | UA 95 % CI | macro-F1 | params | MFLOPs (3 s) | "
             "latency (ms, 3 s) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in results["models"].items():
        low, high = row["ua_ci95"]
        lines.append(f"| {name} | {row['wa']:.3f} | {row['ua']:.3f} | {low:.3f}-{high:.3f} | "
                     f"{row['macro_f1']:.3f} | {row['params']:,} | {row['flops'] / 1e6:.1f} | "
                     f"{row['latency_ms']:.2f} |")
    m = results["merge"]
    lines += ["", f"deHRF merge: max |p_hrf - p_merged| = {m['max_abs_err']:.2e} on the test "
                  f"probabilities; identical predictions: {100 * m['predictions_identical']:.1f}%",
              "", "One seed: the intervals resample test utterances, not training runs, so they",
              "say nothing about seed-to-seed variation. Whether HRF helps is a paired",
              f"comparison over seeds: {STUDY_POINTER}"]
    return "\n".join(lines)
