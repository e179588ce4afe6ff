"""Checks of an exported model against the JAX model it came from: logits, WA and UA.

Every model here is a function ``(signal (1, ...), length (1,)) -> logits (1, C)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

import hrf_jax_runtime.model as runtime
from hrf_jax.export.graph import InputSpec, graph_fn
from hrf_jax.export.source import Source
from hrf_jax.metrics import classification_metrics

Logits = Callable[[np.ndarray, np.ndarray], np.ndarray]
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


def _fit(x: np.ndarray, length: int | None) -> tuple[np.ndarray, int]:
    """Crops or zero-pads time-first ``x`` to ``length``: (padded, valid)."""
    if length is None:
        return x.astype(np.float32), len(x)
    valid = min(len(x), length)
    out = np.zeros((length, *x.shape[1:]), np.float32)
    out[:valid] = x[:valid]
    return out, valid


def _split(src: Source, names: tuple[str, ...]) -> tuple[str, Any]:
    """The first non-empty split of ``names`` in the run's corpus (else the last one)."""
    for name in names:
        if len(getattr(src.dataset, name)):
            break
    return name, getattr(src.dataset, name)


def parity_inputs(src: Source, spec: InputSpec, split: str, limit: int,
                  seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batched ``(signal (1, ...), length (1,))`` pairs for checks and calibration.

    Log-Mel graphs use utterances of ``split`` (normalised as in training). Front-end graphs
    need audio, which prepared corpora do not keep: they use synthetic utterances
    (``hrf_jax.data.synthetic``) - parity compares two implementations of the same graph,
    so any speech-like audio serves.
    """
    out = []
    if spec.frontend:
        from hrf_jax.data.synthetic import SyntheticConfig, synthesize

        cfg = SyntheticConfig(seed=1000 + seed + SPLIT_SEEDS[split])
        for i in range(limit):
            wave, _, _ = synthesize(cfg, i)
            sig, valid = _fit(wave, spec.length)
            out.append((sig[None], np.asarray([valid], np.int32)))
        return out
    _, source = _split(src, (split, "validation", "train"))
    for i in range(min(limit, len(source))):
        sig, valid = _fit(source[i]["feats"], spec.length)
        out.append((sig[None], np.asarray([valid], np.int32)))
    return out


def reference(src: Source, frontend: bool) -> Logits:
    """The run's own JAX model (HRF, unfolded) as a jitted float32 function, highest precision."""
    jitted = jax.jit(graph_fn(src.reference_model, src.reference_variables, src.info, frontend))

    def run(signal: np.ndarray, length: np.ndarray) -> np.ndarray:
        with jax.default_matmul_precision("highest"):
            return np.asarray(jitted(signal, length), np.float32)

    return run


def compare(exported: Logits, reference: Logits,
            inputs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Max |logit diff| and argmax agreement of two models over ``inputs``."""
    diffs, agree = [], 0
    for signal, length in inputs:
        a = np.asarray(exported(signal, length), np.float32)
        b = np.asarray(reference(signal, length), np.float32)
        diffs.append(float(np.max(np.abs(a - b))))
        agree += int(np.argmax(a) == np.argmax(b))
    n = len(inputs)
    return {"max_abs_logit_diff": max(diffs) if diffs else None,
            "mean_max_abs_logit_diff": float(np.mean(diffs)) if diffs else None,
            "argmax_agreement": agree / n if n else None, "utterances": n}


def evaluate_split(exported: Logits, reference: Logits, src: Source, spec: InputSpec,
                   split: str, limit: int) -> dict[str, Any]:
    """WA/UA of the exported and the float32 JAX model on ``split`` (first ``limit``
    utterances, each cut into the exported windows as the runtime does)."""
    split, source = _split(src, (split, "validation"))
    n = min(limit, len(source))
    labels, pe, pr = [], [], []
    for i in range(n):
        item = source[i]
        win = runtime.windows(item["feats"], spec.length)
        w = np.asarray([v for _, v in win], np.float64)
        probs = []
        for fn in (exported, reference):
            p = np.stack([runtime.softmax(fn(x[None], np.asarray([v], np.int32))[0])
                          for x, v in win])
            probs.append((p * w[:, None]).sum(0) / w.sum())
        labels.append(item["label"])
        pe.append(probs[0].argmax())
        pr.append(probs[1].argmax())
    c = len(src.info["class_names"])
    me = classification_metrics(np.asarray(labels), np.asarray(pe), c)
    mr = classification_metrics(np.asarray(labels), np.asarray(pr), c)
    return {"split": split, "utterances": n,
            "exported": {"wa": me["wa"], "ua": me["ua"]},
            "fp32_jax": {"wa": mr["wa"], "ua": mr["ua"]},
            "prediction_agreement": float(np.mean(np.asarray(pe) == np.asarray(pr))) if n
            else None}
