"""SER metrics on the host, from accumulated predictions (never averaged per batch).

WA = accuracy, UA = mean per-class recall (unweighted accuracy), macro/weighted F1,
confusion matrix; and the DAIC-WOZ participant-level vote (SpeechFormer protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` counts, rows = true class, columns = predicted class."""
    labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} differ in shape")
    out_of_range = (labels < 0) | (labels >= num_classes) | (preds < 0) | (preds >= num_classes)
    if np.any(out_of_range):
        raise ValueError(f"class ids must lie in [0, {num_classes}); got some outside")
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def classification_metrics(
    labels: np.ndarray, preds: np.ndarray, num_classes: int
) -> dict[str, Any]:
    """WA, UA, macro-F1, weighted-F1 (fractions in [0, 1]) and the confusion matrix.

    Classes absent from ``labels`` are left out of UA and macro-F1 (as scikit-learn does
    for recall with ``labels`` given only from the data), so a fold without a class is
    not penalised for it.
    """
    cm = confusion_matrix(labels, preds, num_classes)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm).astype(np.float64)
    present = (support + predicted) > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    total = cm.sum()
    return {
        "wa": float(tp.sum() / total) if total else 0.0,
        "ua": float(recall[support > 0].mean()) if np.any(support > 0) else 0.0,
        "macro_f1": float(f1[present].mean()) if np.any(present) else 0.0,
        "weighted_f1": float((f1 * support).sum() / total) if total else 0.0,
        "confusion": cm.tolist(),
        "num_examples": int(total),
    }


def participant_vote(
    probs: np.ndarray, groups: Sequence[str], labels: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Majority vote of segment predictions per participant.

    ``probs (N, C)`` segment probabilities. Ties in the vote go to the class with the
    larger mean probability. Returns (participants, participant labels, participant preds).
    A participant whose segments disagree on the label is an input error.
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    names = sorted(set(groups.tolist()))
    out_labels, out_preds = [], []
    for name in names:
        idx = np.flatnonzero(groups == name)
        seg_labels = np.unique(labels[idx])
        if len(seg_labels) != 1:
            raise ValueError(f"participant {name} has segments with labels {seg_labels.tolist()}")
        votes = np.bincount(probs[idx].argmax(-1), minlength=probs.shape[1])
        tied = np.flatnonzero(votes == votes.max())
        out_preds.append(int(tied[np.argmax(probs[idx][:, tied].mean(0))]))
        out_labels.append(int(seg_labels[0]))
    return names, np.asarray(out_labels), np.asarray(out_preds)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, np.float64)
    if arr.size == 0:
        raise ValueError("mean_std of no values")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def bootstrap_ua_ci(labels: np.ndarray, preds: np.ndarray, num_classes: int, *,
                    resamples: int = 2000, level: float = 0.95, seed: int = 0
                    ) -> tuple[float, float]:
    """Percentile-bootstrap interval of UA over utterances (resampled with replacement), as
    fractions: how much a test-set UA could move with another draw of the same test set.
    A class absent from a resample is left out of its UA, as in ``classification_metrics``."""
    labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
    if labels.size == 0:
        raise ValueError("bootstrap_ua_ci of no utterances")
    idx = np.random.default_rng(seed).integers(0, labels.size, (resamples, labels.size))
    y, hit = labels[idx], (labels == preds)[idx]
    onehot = y[..., None] == np.arange(num_classes)  # (resamples, N, C)
    support = onehot.sum(1)
    correct = (onehot & hit[..., None]).sum(1)
    recall = np.where(support > 0, correct / np.maximum(support, 1), np.nan)
    ua = np.nanmean(recall, axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(ua, [tail, 100 - tail])
    return float(low), float(high)
