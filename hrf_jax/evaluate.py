"""Metrics of a model on a whole split: bucketed eval batches, probabilities, WA/UA/F1."""

from __future__ import annotations

from typing import Any

import numpy as np

from hrf_jax.data import EvalLoader
from hrf_jax.metrics import classification_metrics, participant_vote
from hrf_jax.train import DataParallel, predict_source

# padded eval lengths (frames): few shapes, so few compilations; longer audio is chunked
EVAL_BUCKETS = (150, 300, 600, 1000)


def split_probs(eval_step: Any, variables: dict, source: Any, parallel: DataParallel,
                num_classes: int, batch_size: int) -> np.ndarray:
    """Class probabilities ``(N, C)`` of every utterance of ``source`` (a data ``Source``)."""
    loader = EvalLoader(source, batch_size=batch_size, buckets=EVAL_BUCKETS,
                        chunk_frames=EVAL_BUCKETS[-1], host=parallel.host)
    return predict_source(eval_step, variables["params"], variables.get("batch_stats", {}),
                          loader, parallel, len(source), num_classes)


def evaluate(eval_step: Any, variables: dict, source: Any, parallel: DataParallel,
             num_classes: int, batch_size: int, vote: bool = False) -> dict[str, Any]:
    """Metrics of ``variables`` on a whole split, from all predictions at once; ``vote`` adds
    the per-group (participant) majority vote under ``"participant"``."""
    probs = split_probs(eval_step, variables, source, parallel, num_classes, batch_size)
    result = classification_metrics(source.labels, probs.argmax(-1), num_classes)
    if vote:
        _, labels, preds = participant_vote(probs, source.groups, source.labels)
        result["participant"] = classification_metrics(labels, preds, num_classes)
    return result
