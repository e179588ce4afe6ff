"""From a training workdir to the deployable plain model: load, deHRF-merge, verify, save.

The deploy checkpoint (``<workdir>/deploy``) holds the variables of the plain model
(``hrf_ratio=0``) and ``deploy.json`` with the model config, classes, feature settings,
normalisation statistics and the equivalence report measured at merge time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from hrf_jax.audio import MelSettings, load_audio, logmel_np, utterance_normalize
from hrf_jax.checkpoint import restore_state
from hrf_jax.config import load_config
from hrf_jax.loop import CONFIG_FILE, RUN_INFO, model_from_config, open_dataset
from hrf_jax.models import build_model
from hrf_jax.reparam import count_params, merge_hrf, verify_equivalence
from hrf_jax.train import create_state, make_optimizer

DEPLOY_DIR = "deploy"
DEPLOY_INFO = "deploy.json"


def load_run(workdir: str | Path, which: str = "best") -> tuple[Any, dict, Any, dict]:
    """(config, run_info, HRF model, variables) of the ``best`` or ``checkpoints`` state."""
    workdir = Path(workdir)
    for name in (CONFIG_FILE, RUN_INFO):
        if not (workdir / name).is_file():
            raise FileNotFoundError(f"{workdir / name} not found: is {workdir} a training workdir?")
    config = load_config(str(workdir / CONFIG_FILE))
    info = json.loads((workdir / RUN_INFO).read_text())
    num_classes = len(info["class_names"])
    model = model_from_config(config.model, num_classes)
    feats = np.zeros((1, 16, info["feature_dim"]), np.float32)
    mask = np.ones((1, 16), bool)
    template = create_state(model, make_optimizer(config.optimizer, 1), jax.random.PRNGKey(0),
                            feats, mask)
    state, _ = restore_state(workdir / which, template)
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return config, info, model, variables


def merge_run(workdir: str | Path, out: str | Path | None = None,
              num_check: int = 8) -> dict[str, Any]:
    """Merges the best checkpoint into the plain model, verifies it on validation
    utterances (float32, highest precision) and saves the deploy checkpoint."""
    workdir = Path(workdir)
    out = Path(out) if out else workdir / DEPLOY_DIR
    config, info, model, variables = load_run(workdir)
    plain = model_from_config(config.model, len(info["class_names"]), plain=True)
    ds = open_dataset(config.dataset, prepare=False)
    source = ds.validation if len(ds.validation) else ds.train
    worst = {"max_abs_err": 0.0, "max_rel_err": 0.0}
    report: dict[str, Any] = {}
    for i in range(min(num_check, len(source))):
        feats = source[i]["feats"][None]
        mask = np.ones(feats.shape[:2], bool)
        report = verify_equivalence(model, plain, variables, feats, mask, train=False)
        for key in worst:
            worst[key] = max(worst[key], report[key])
    report.update(worst, checked_utterances=min(num_check, len(source)))
    if not report.get("structure_match", False):
        raise RuntimeError(f"merged tree does not match the plain model's structure: {report}")
    deploy = merge_hrf(variables)
    if out.exists():
        shutil.rmtree(out)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((out / "variables").absolute(), jax.device_get(deploy))
    checkpointer.wait_until_finished()
    plain_config = json.loads(config.to_json())
    plain_config["model"]["hrf_ratio"] = 0
    meta = {"config": plain_config, "run_info": info, "equivalence": report,
            "params": count_params(deploy["params"]), "source": str(workdir.absolute())}
    (out / DEPLOY_INFO).write_text(json.dumps(meta, indent=2))
    return meta


def load_deploy(path: str | Path) -> tuple[Any, dict, dict]:
    """(plain model, variables, deploy meta) of a deploy folder written by ``merge_run``."""
    path = Path(path)
    if not (path / DEPLOY_INFO).is_file():
        raise FileNotFoundError(f"{path / DEPLOY_INFO} not found; run `hrf-jax merge` first")
    meta = json.loads((path / DEPLOY_INFO).read_text())
    mcfg = ml_collections.ConfigDict(meta["config"]["model"])
    info = meta["run_info"]
    model = build_model(mcfg.backbone, mcfg.size, num_classes=len(info["class_names"]),
                        hrf_targets=tuple(mcfg.hrf_targets), dropout=mcfg.dropout)
    feats = np.zeros((1, 16, info["feature_dim"]), np.float32)
    template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), feats,
                                                 np.ones((1, 16), bool)))
    variables = ocp.StandardCheckpointer().restore((path / "variables").absolute(), template)
    return model, variables, meta


def features_for(path: str | Path, info: dict) -> np.ndarray:
    """Log-Mel ``(T, F)`` of an audio file, normalised as in training."""
    feats = logmel_np(load_audio(path), MelSettings(num_mels=info["feature_dim"]))
    if info.get("mean") is not None:
        feats = (feats - np.asarray(info["mean"], np.float32)) / np.asarray(info["std"],
                                                                             np.float32)
    elif info.get("normalize") == "utterance":
        feats = utterance_normalize(feats)
    return feats.astype(np.float32)


def predict_files(paths: list[str], model: Any, variables: dict, info: dict) -> list[dict]:
    """Emotion and class probabilities for each audio file (one forward per file)."""
    apply = jax.jit(lambda v, f, m: jax.nn.softmax(model.apply(v, f, m, train=False), -1))
    out = []
    for path in paths:
        feats = features_for(path, info)
        padded = 100 * -(-len(feats) // 100)  # pad to 1 s buckets: few recompiles
        batch = np.zeros((1, padded, feats.shape[1]), np.float32)
        batch[0, : len(feats)] = feats
        mask = np.arange(padded)[None] < len(feats)
        probs = np.asarray(apply(variables, batch, mask))[0]
        names = info["class_names"]
        out.append({"path": str(path), "label": names[int(probs.argmax())],
                    "probs": {n: float(p) for n, p in zip(names, probs, strict=True)}})
    return out

