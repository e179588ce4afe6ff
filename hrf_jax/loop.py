"""The training run: ``fit(config, workdir)`` orchestrates a few named steps.

``_setup`` (data, model, optimizer, jit steps, checkpoints), ``_resume`` (newest readable
checkpoint), ``_train_epoch`` (resumable mid-epoch), ``_select_and_save`` (validation metrics,
best-so-far selection, checkpoint, log line) and ``_final_report`` (test metrics of the
checkpoint selected on the validation split, which is carved from training speakers).

On many hosts every process runs the same steps on its share of each batch; process 0 alone
prepares the corpus, writes the run files and metrics (``metrics_writer``) and logs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from hrf_jax.checkpoint import RunCheckpoints, restore_state
from hrf_jax.config import validate
from hrf_jax.data import TrainLoader
from hrf_jax.evaluate import evaluate
from hrf_jax.logs import get_logger
from hrf_jax.metrics_writer import MetricsWriter
from hrf_jax.run import Run, is_main_process, write_run_file
from hrf_jax.train import (
    DataParallel,
    TrainState,
    create_state,
    make_eval_step,
    make_optimizer,
    make_schedule,
    make_train_step,
)


@dataclasses.dataclass
class _Training:
    """What the steps of one ``fit`` share."""

    run: Run
    ds: Any
    parallel: DataParallel
    loader: TrainLoader
    train_step: Any
    eval_step: Any
    checkpoints: RunCheckpoints
    eval_batch_size: int
    writer: MetricsWriter
    batch_size: int

    @property
    def tcfg(self) -> ml_collections.ConfigDict:
        return self.run.config.train

    def evaluate(self, state: TrainState, source: Any) -> dict[str, Any]:
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return evaluate(self.eval_step, variables, source, self.parallel, self.run.num_classes,
                        self.eval_batch_size, vote=self.run.group_vote)


def fit(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains (or resumes) the run in ``workdir``; returns the final summary (also FINAL).
    A run that has finished its epochs returns its saved summary without evaluating again."""
    validate(config)  # a config built in Python has not been through load_config
    if config.train.distributed:
        _connect_hosts(config.train)
    run = Run.create(workdir, config)
    run.save_config()
    if run.final.is_file():  # finished before: report it without loading or evaluating again
        summary = json.loads(run.final.read_text())
        if len(summary["history"]) >= config.train.epochs:
            _say(f"{run.path} has finished its {len(summary['history'])} epochs; "
                 f"final metrics: {run.final}")
            return summary
    t, state = _setup(run)
    state, meta = _resume(t, state)
    steps_per_epoch = len(t.loader)
    for epoch in range(int(meta["step"]) // steps_per_epoch, t.tcfg.epochs):
        started = time.perf_counter()
        state, running = _train_epoch(t, state, meta, epoch)
        meta = _select_and_save(t, state, meta, epoch, running, time.perf_counter() - started)
    t.checkpoints.wait()
    t.checkpoints.close()
    t.writer.close()
    return _final_report(t, state, meta)


def _connect_hosts(tcfg: ml_collections.ConfigDict) -> None:
    """Joins the run's other processes; an empty address or -1 lets JAX detect the cluster."""
    jax.distributed.initialize(
        coordinator_address=tcfg.coordinator_address or None,
        num_processes=tcfg.num_processes if tcfg.num_processes >= 0 else None,
        process_id=tcfg.process_id if tcfg.process_id >= 0 else None,
    )


def _say(message: str) -> None:
    """Logs once per run, not once per process."""
    if is_main_process():
        get_logger().info(message)


def _open_dataset(run: Run) -> Any:
    """Process 0 prepares the corpus while the others wait, so no two processes write it."""
    ds = run.dataset(prepare=True) if is_main_process() else None
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("hrf_jax: corpus prepared")
    return ds if ds is not None else run.dataset()


def _round_batch(batch_size: int, parallel: DataParallel) -> int:
    return max(parallel.size, batch_size // parallel.size * parallel.size)


def _setup(run: Run) -> tuple[_Training, TrainState]:
    tcfg = run.config.train
    ds = _open_dataset(run)
    run.save_info(ds)
    model = run.model()
    parallel = DataParallel()
    batch_size = _round_batch(tcfg.batch_size, parallel)
    loader = TrainLoader(ds.train, batch_size=batch_size, max_frames=tcfg.max_frames,
                         seed=tcfg.seed, balanced=tcfg.balanced,
                         host=parallel.host)
    total_steps = tcfg.epochs * len(loader)
    tx = make_optimizer(run.config.optimizer, total_steps)
    feats, mask = run.example_inputs(batch_size, tcfg.max_frames)
    state = parallel.replicate(create_state(model, tx, jax.random.PRNGKey(tcfg.seed), feats,
                                            mask))
    counts = ds.class_counts("train").astype(np.float64)
    class_weights = (counts.sum() / np.maximum(counts, 1) / len(counts)
                     if tcfg.class_weights else None)
    compute_dtype = jnp.bfloat16 if tcfg.compute_dtype == "bfloat16" else jnp.float32
    train_step = make_train_step(model, tx, parallel, label_smoothing=tcfg.label_smoothing,
                                 class_weights=class_weights, compute_dtype=compute_dtype)
    t = _Training(run=run, ds=ds, parallel=parallel, loader=loader, train_step=train_step,
                  eval_step=make_eval_step(model, parallel),
                  checkpoints=RunCheckpoints(run.last_dir, run.best_dir, tcfg.keep_last),
                  eval_batch_size=_round_batch(tcfg.eval_batch_size, parallel),
                  writer=MetricsWriter(run.path, run.metrics_log, enabled=is_main_process(),
                                       lr_schedule=make_schedule(run.config.optimizer,
                                                                 total_steps)),
                  batch_size=batch_size)
    return t, state


def _resume(t: _Training, state: TrainState) -> tuple[TrainState, dict[str, Any]]:
    restored = t.checkpoints.restore_latest(state)
    if restored is None:
        return state, {"step": 0, "history": [], "best": None}
    state, meta = restored
    _say(f"resuming {t.run.path} from step {meta['step']} (epoch {meta['epoch']}, "
         f"batch {meta['batch']})")
    return state, meta


def _train_epoch(t: _Training, state: TrainState, meta: dict[str, Any], epoch: int
                 ) -> tuple[TrainState, dict[str, Any] | None]:
    """One epoch from the checkpointed position; returns the state and the epoch's sums and
    advances ``meta["step"]``."""
    steps_per_epoch = len(t.loader)
    step = int(meta["step"])
    start = step - epoch * steps_per_epoch
    # sums of the interrupted epoch so far, so a resumed epoch logs the same numbers
    running = _restore_running(meta.get("running")) if start else None
    bar = tqdm(total=steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{t.tcfg.epochs}",
               disable=not (t.tcfg.progress and is_main_process()), leave=False)
    t.writer.start_window(step)
    window = None  # sums since the last host sync, for the per-step scalars
    for i, batch in enumerate(t.loader.epoch(epoch, start=start), start=start):
        state, stats = t.train_step(state, t.parallel.put_batch(batch, local=True))
        weighted = {"loss": stats["loss"] * stats["count"], "correct": stats["correct"],
                    "count": stats["count"]}
        running = weighted if running is None else jax.tree_util.tree_map(
            jnp.add, running, weighted)
        window = weighted if window is None else jax.tree_util.tree_map(
            jnp.add, window, weighted)
        step += 1
        bar.update(1)
        if (i + 1) % t.tcfg.log_every_steps == 0 or i + 1 == steps_per_epoch:
            # the only host sync in an epoch
            got, win = jax.device_get((running, window))
            bar.set_postfix(loss=f"{got['loss'] / got['count']:.3f}",
                            acc=f"{got['correct'] / got['count']:.3f}")
            t.writer.step_scalars(step, float(win["loss"] / win["count"]),
                                  float(win["correct"] / win["count"]), t.batch_size)
            window = None
        every = t.tcfg.save_every_steps
        if every and step % every == 0 and i + 1 < steps_per_epoch:
            sums = {k: v.item() for k, v in jax.device_get(running).items()}
            t.checkpoints.save(state, {**meta, "step": step, "epoch": epoch, "batch": i + 1,
                                       "running": sums})
    bar.close()
    meta["step"] = step
    return state, running


def _select_and_save(t: _Training, state: TrainState, meta: dict[str, Any], epoch: int,
                     running: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    """Validation metrics, best-so-far selection, the epoch's checkpoint and log line."""
    got = jax.device_get(running) if running is not None else None
    val = t.evaluate(state, t.ds.validation)
    record = {
        "epoch": epoch + 1, "step": meta["step"],
        "train_loss": float(got["loss"] / got["count"]) if got else None,
        "train_acc": float(got["correct"] / got["count"]) if got else None,
        "val": {k: v for k, v in val.items() if k != "confusion"},
        "seconds": seconds,
    }
    score = val[t.tcfg.select_metric]
    improved = meta["best"] is None or score > meta["best"]["score"]
    meta = {k: v for k, v in meta.items() if k != "running"}
    if improved:
        meta["best"] = {"score": score, "epoch": epoch + 1, "step": meta["step"]}
    meta["history"] = [*meta["history"], record]
    t.checkpoints.save(state, {**meta, "epoch": epoch + 1, "batch": 0}, best=improved)
    t.writer.epoch(record)
    val = record["val"]
    loss = "-" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
    _say(f"epoch {record['epoch']}: loss {loss} val WA {val['wa']:.3f} UA {val['ua']:.3f}"
         + (" *" if improved else ""))
    return meta


def _final_report(t: _Training, state: TrainState, meta: dict[str, Any]) -> dict[str, Any]:
    """Validation and test metrics of the checkpoint selected on validation data and of the
    final state (``*_last``: the endpoint that no selection can bias), written to
    ``final.json``."""
    best_state, best_meta = restore_state(t.run.best_dir, state)
    has_test = len(t.ds.test) > 0
    summary = {
        "selected": best_meta["best"],
        "validation": t.evaluate(best_state, t.ds.validation),
        "test": t.evaluate(best_state, t.ds.test) if has_test else None,
        "validation_last": t.evaluate(state, t.ds.validation),
        "test_last": t.evaluate(state, t.ds.test) if has_test else None,
        "history": meta["history"],
        "class_names": t.ds.class_names,
    }
    write_run_file(t.run.final, json.dumps(summary, indent=2))
    return summary


def _restore_running(sums: dict | None) -> dict | None:
    """Epoch sums saved mid-epoch, back in the dtypes the train step accumulates in."""
    if sums is None:
        return None
    return {"loss": jnp.asarray(sums["loss"], jnp.float32),
            "correct": jnp.asarray(sums["correct"], jnp.int32),
            "count": jnp.asarray(sums["count"], jnp.int32)}

