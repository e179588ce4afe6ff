"""Where a run's numbers go: ``metrics.jsonl`` (one line per epoch) and TensorBoard event
files (``<workdir>/tensorboard``, tensorboardX's writer: per-step and per-epoch scalars).

Per-step scalars are written at the loop's host syncs (every ``train.log_every_steps``):
window means of loss and accuracy, the learning rate, steps/s and examples/s of the window.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"


class MetricsWriter:
    """``step_scalars`` while training, ``epoch`` after each epoch, ``close`` at the end.
    Only process 0 writes (``enabled=False`` elsewhere)."""

    def __init__(self, workdir: Path, metrics_log: Path, *, enabled: bool = True,
                 lr_schedule: Callable[[int], Any] | None = None):
        self.metrics_log = metrics_log
        self.enabled = enabled
        self.lr_schedule = lr_schedule
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / TENSORBOARD_DIR))
        self._window: tuple[int, float] | None = None  # (step, time) of the last sync

    def start_window(self, step: int) -> None:
        """Marks where the next step-scalar window begins (the start of an epoch)."""
        self._window = (step, time.perf_counter())

    def step_scalars(self, step: int, loss: float, accuracy: float, batch_size: int) -> None:
        """Window means since the last call, and its throughput."""
        now = time.perf_counter()
        if self._window is None:
            self._window = (step, now)
            return
        start, then = self._window
        self._window = (step, now)
        if not self.enabled or step <= start:
            return
        steps_per_s = (step - start) / max(now - then, 1e-9)
        scalars = {"train/loss": loss, "train/accuracy": accuracy,
                   "train/steps_per_second": steps_per_s,
                   "train/examples_per_second": steps_per_s * batch_size}
        if self.lr_schedule is not None:
            # the lr of the window's last update (optax counts updates from 0)
            scalars["train/learning_rate"] = float(self.lr_schedule(step - 1))
        for tag, value in scalars.items():
            self._tb.add_scalar(tag, value, step)

    def epoch(self, record: dict[str, Any]) -> None:
        """The epoch's line in ``metrics.jsonl`` and its scalars in TensorBoard."""
        if not self.enabled:
            return
        with open(self.metrics_log, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        if record["train_loss"] is not None:
            self._tb.add_scalar("epoch/train_loss", record["train_loss"], step)
            self._tb.add_scalar("epoch/train_accuracy", record["train_acc"], step)
        for key in ("wa", "ua", "macro_f1"):
            self._tb.add_scalar(f"val/{key}", record["val"][key], step)
        self._tb.add_scalar("epoch/seconds", record["seconds"], step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
