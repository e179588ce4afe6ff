"""From a training workdir to the deployable plain model: load, deHRF-merge, verify, save.

The deploy folder (``<workdir>/deploy``) holds the variables of the plain model
(``hrf_ratio=0``) and ``deploy.json`` with the model config, classes, feature settings,
normalisation statistics and the equivalence report measured at merge time; ``Run.load``
opens it as a run of its own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from hrf_jax.audio import MelSettings, load_audio, logmel_np, utterance_normalize
from hrf_jax.reparam import count_params, merge_hrf, verify_equivalence
from hrf_jax.run import DEPLOY_INFO, DEPLOY_VARIABLES, Run
from hrf_jax.xla_options import eval_compiler_options


def merge_run(workdir: str | Path, out: str | Path | None = None,
              num_check: int = 8) -> dict[str, Any]:
    """Merges the best checkpoint into the plain model, verifies it on ``num_check``
    validation utterances (one padded batch, float32, highest precision) and saves the
    deploy folder."""
    run = Run.load(workdir)
    out = Path(out) if out else run.deploy_dir
    model, plain, variables = run.model(), run.model(plain=True), run.variables("best")
    ds = run.dataset()
    source = ds.validation if len(ds.validation) else ds.train
    utterances = [source[i]["feats"] for i in range(min(num_check, len(source)))]
    frames = max(len(u) for u in utterances)
    feats = np.zeros((len(utterances), frames, run.feature_dim), np.float32)
    for i, u in enumerate(utterances):
        feats[i, : len(u)] = u
    mask = np.arange(frames)[None] < np.asarray([len(u) for u in utterances])[:, None]
    report = verify_equivalence(model, plain, variables, feats, mask, train=False)
    report["checked_utterances"] = len(utterances)
    if not report["structure_match"]:
        raise RuntimeError(f"merged tree does not match the plain model's structure: {report}")
    deploy = merge_hrf(variables)
    if out.exists():
        shutil.rmtree(out)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((out / DEPLOY_VARIABLES).absolute(), jax.device_get(deploy))
    checkpointer.wait_until_finished()
    plain_config = json.loads(run.config.to_json())
    plain_config["model"]["hrf_ratio"] = 0
    meta = {"config": plain_config, "run_info": run.info, "equivalence": report,
            "params": count_params(deploy["params"]), "source": str(run.path.absolute())}
    (out / DEPLOY_INFO).write_text(json.dumps(meta, indent=2))
    return meta


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
    apply = jax.jit(lambda v, f, m: jax.nn.softmax(model.apply(v, f, m, train=False), -1),
                    compiler_options=eval_compiler_options(model, utterance=True))
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

