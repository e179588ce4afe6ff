"""PNG plots of a run: confusion matrix and learning curves (matplotlib, headless)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                   path: str | Path) -> Path:
    """Row-normalised confusion matrix with counts in the cells."""
    cm = np.asarray(confusion, np.float64)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.2 * len(class_names) + 1.5))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, f"{int(count)}\n{rates[i, j]:.0%}", ha="center", va="center",
                color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
    return _save(fig, path)


def plot_learning_curves(metrics_log: str | Path, path: str | Path) -> Path:
    """Training loss and validation WA/UA per epoch from ``metrics.jsonl``."""
    records = [json.loads(line) for line in Path(metrics_log).read_text().splitlines() if line]
    epochs = [r["epoch"] for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(epochs, [r["train_loss"] for r in records], marker="o")
    left.set(xlabel="epoch", ylabel="training loss")
    for key in ("wa", "ua"):
        right.plot(epochs, [r["val"][key] for r in records], marker="o", label=f"val {key.upper()}")
    right.set(xlabel="epoch", ylabel="score", ylim=(0, 1))
    right.legend()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
