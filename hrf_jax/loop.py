"""The training run: data, model, jit steps, resumable epochs, model selection, test metrics.

``fit(config, workdir)`` resumes from the newest readable checkpoint in ``workdir``, trains to
``config.train.epochs``, keeps the checkpoint that is best on the validation split (carved
from training speakers) and reports test metrics for that checkpoint only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from hrf_jax.checkpoint import RunCheckpoints, restore_state
from hrf_jax.data import EvalLoader, TrainLoader, ensure_prepared, load_dataset
from hrf_jax.metrics import classification_metrics, participant_vote
from hrf_jax.models import build_model
from hrf_jax.train import (
    DataParallel,
    create_state,
    make_eval_step,
    make_optimizer,
    make_train_step,
    predict_source,
)

CONFIG_FILE = "config.json"
RUN_INFO = "run_info.json"
METRICS_LOG = "metrics.jsonl"
FINAL = "final.json"
# padded eval lengths (frames): few shapes, so few compilations; longer audio is chunked
EVAL_BUCKETS = (150, 300, 600, 1000)
_GROUP_VOTE = ("daic_woz",)


def dataset_options(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Keyword options of ``prepare``/``load_dataset`` set in the config (0/"" = default)."""
    opts = {
        "manifest": cfg.manifest or None,
        "num_utterances": cfg.num_utterances or None,
        "num_speakers": cfg.num_speakers or None,
    }
    return {k: v for k, v in opts.items() if v is not None}


def open_dataset(cfg: ml_collections.ConfigDict, *, prepare: bool = True):
    """Prepares the corpus if needed (synthetic, or with ``manual_dir``) and opens the fold."""
    data_dir = cfg.data_dir or None
    options = dataset_options(cfg)
    if prepare and (cfg.name == "synthetic" or cfg.manual_dir or cfg.manifest):
        prep_opts = {k: v for k, v in options.items() if k != "manifest"}
        ensure_prepared(cfg.name, data_dir, manual_dir=cfg.manual_dir or None,
                        manifest=cfg.manifest or None, **prep_opts)
    return load_dataset(
        cfg.name, data_dir,
        fold=None if cfg.fold < 0 else cfg.fold,
        protocol=cfg.protocol or None,
        normalize=cfg.normalize,
        **options,
    )


def model_from_config(cfg: ml_collections.ConfigDict, num_classes: int, *, plain: bool = False):
    """``build_model`` from the ``model`` section; ``plain=True`` drops HRF (the deploy model)."""
    return build_model(
        cfg.backbone, cfg.size, num_classes=num_classes,
        hrf_ratio=0 if plain else cfg.hrf_ratio,
        hrf_targets=tuple(cfg.hrf_targets), hrf_depth=cfg.hrf_depth, hrf_bias=cfg.hrf_bias,
        hrf_init=cfg.hrf_init, hrf_base=cfg.hrf_base, dropout=cfg.dropout,
    )


def _check_same_run(workdir: Path, config: ml_collections.ConfigDict) -> None:
    saved = workdir / CONFIG_FILE
    if not saved.is_file():
        saved.write_text(config.to_json(indent=2))
        return
    old = json.loads(saved.read_text())
    new = json.loads(config.to_json())
    for section in ("dataset", "model"):
        if old.get(section) != new.get(section):
            raise ValueError(
                f"{workdir} holds a run with a different {section} config; use a new --workdir "
                f"(saved: {old.get(section)}, now: {new.get(section)})"
            )
    saved.write_text(config.to_json(indent=2))


def evaluate(eval_step, state, source, parallel, num_classes: int, batch_size: int,
             vote: bool = False) -> dict[str, Any]:
    """Metrics of the model in ``state`` on a whole split (host-side, from all predictions)."""
    loader = EvalLoader(source, batch_size=batch_size, buckets=EVAL_BUCKETS,
                        chunk_frames=EVAL_BUCKETS[-1])
    probs = predict_source(eval_step, state.params, state.batch_stats, loader, parallel,
                           len(source), num_classes)
    result = classification_metrics(source.labels, probs.argmax(-1), num_classes)
    if vote:
        _, p_labels, p_preds = participant_vote(probs, source.groups, source.labels)
        result["participant"] = classification_metrics(p_labels, p_preds, num_classes)
    return result


def _round_batch(batch_size: int, parallel: DataParallel) -> int:
    return max(parallel.size, batch_size // parallel.size * parallel.size)


def fit(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains (or resumes) the run in ``workdir``; returns the final summary (also FINAL)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tcfg = config.train
    if tcfg.distributed:
        jax.distributed.initialize()
    _check_same_run(workdir, config)
    ds = open_dataset(config.dataset)
    num_classes = len(ds.class_names)
    model = model_from_config(config.model, num_classes)
    parallel = DataParallel()
    batch_size = _round_batch(tcfg.batch_size, parallel)
    loader = TrainLoader(ds.train, batch_size=batch_size, max_frames=tcfg.max_frames,
                         seed=tcfg.seed, balanced=tcfg.balanced)
    steps_per_epoch = len(loader)
    total_steps = tcfg.epochs * steps_per_epoch
    tx = make_optimizer(config.optimizer, total_steps)
    feats = np.zeros((batch_size, tcfg.max_frames, ds.feature_dim), np.float32)
    mask = np.ones((batch_size, tcfg.max_frames), bool)
    state = parallel.replicate(create_state(model, tx, jax.random.PRNGKey(tcfg.seed), feats, mask))
    _write_run_info(workdir, ds, config)

    counts = ds.class_counts("train").astype(np.float64)
    class_weights = counts.sum() / np.maximum(counts, 1) / len(counts) if tcfg.class_weights \
        else None
    compute_dtype = jnp.bfloat16 if tcfg.compute_dtype == "bfloat16" else jnp.float32
    train_step = make_train_step(model, tx, parallel, label_smoothing=tcfg.label_smoothing,
                                 class_weights=class_weights, compute_dtype=compute_dtype)
    eval_step = make_eval_step(model, parallel)
    vote = config.dataset.name in _GROUP_VOTE
    eval_bs = _round_batch(tcfg.eval_batch_size, parallel)

    ckpts = RunCheckpoints(workdir, tcfg.keep_last)
    meta: dict[str, Any] = {"step": 0, "history": [], "best": None}
    restored = ckpts.restore_latest(state)
    if restored is not None:
        state, meta = restored
        print(f"resuming {workdir} from step {meta['step']} (epoch {meta['epoch']}, "
              f"batch {meta['batch']})")
    writer = _tensorboard(workdir)

    step = int(meta["step"])
    for epoch in range(step // steps_per_epoch, tcfg.epochs):
        start = step - epoch * steps_per_epoch
        # sums of the interrupted epoch so far, so a resumed epoch logs the same numbers
        running = _restore_running(meta.get("running")) if start else None
        t0 = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{tcfg.epochs}",
                   disable=not tcfg.progress, leave=False)
        for i, batch in enumerate(loader.epoch(epoch, start=start), start=start):
            state, stats = train_step(state, parallel.put_batch(batch))
            weighted = {"loss": stats["loss"] * stats["count"], "correct": stats["correct"],
                        "count": stats["count"]}
            running = weighted if running is None else jax.tree_util.tree_map(
                jnp.add, running, weighted)
            step += 1
            bar.update(1)
            if (i + 1) % 10 == 0 or i + 1 == steps_per_epoch:  # the only host sync in an epoch
                got = jax.device_get(running)
                bar.set_postfix(loss=f"{got['loss'] / got['count']:.3f}",
                                acc=f"{got['correct'] / got['count']:.3f}")
            every = tcfg.save_every_steps
            if every and step % every == 0 and i + 1 < steps_per_epoch:
                sums = {k: v.item() for k, v in jax.device_get(running).items()}
                ckpts.save(state, {**meta, "step": step, "epoch": epoch, "batch": i + 1,
                                   "running": sums})
        bar.close()
        got = jax.device_get(running) if running is not None else None
        val = evaluate(eval_step, state, ds.validation, parallel, num_classes, eval_bs, vote)
        record = {
            "epoch": epoch + 1, "step": step,
            "train_loss": float(got["loss"] / got["count"]) if got else None,
            "train_acc": float(got["correct"] / got["count"]) if got else None,
            "val": {k: v for k, v in val.items() if k != "confusion"},
            "seconds": time.perf_counter() - t0,
        }
        score = val[tcfg.select_metric]
        improved = meta["best"] is None or score > meta["best"]["score"]
        if improved:
            meta["best"] = {"score": score, "epoch": epoch + 1, "step": step}
        meta["history"] = [*meta["history"], record]
        meta.pop("running", None)
        ckpts.save(state, {**meta, "step": step, "epoch": epoch + 1, "batch": 0}, best=improved)
        with open(workdir / METRICS_LOG, "a") as f:
            f.write(json.dumps(record) + "\n")
        if writer is not None:
            _log_tensorboard(writer, record)
        if tcfg.progress:
            print(f"epoch {epoch + 1}: loss {record['train_loss']:.4f} "
                  f"val WA {val['wa']:.3f} UA {val['ua']:.3f}" + (" *" if improved else ""))
    ckpts.wait()
    ckpts.close()

    best_state, best_meta = restore_state(workdir / "best", state)
    summary = {
        "selected": best_meta["best"],
        "validation": evaluate(eval_step, best_state, ds.validation, parallel, num_classes,
                               eval_bs, vote),
        "test": evaluate(eval_step, best_state, ds.test, parallel, num_classes, eval_bs, vote)
        if len(ds.test) else None,
        "history": meta["history"],
        "class_names": ds.class_names,
    }
    (workdir / FINAL).write_text(json.dumps(summary, indent=2))
    return summary


def _restore_running(sums: dict | None) -> dict | None:
    """Epoch sums saved mid-epoch, back in the dtypes the train step accumulates in."""
    if sums is None:
        return None
    return {"loss": jnp.asarray(sums["loss"], jnp.float32),
            "correct": jnp.asarray(sums["correct"], jnp.int32),
            "count": jnp.asarray(sums["count"], jnp.int32)}


def _write_run_info(workdir: Path, ds, config: ml_collections.ConfigDict) -> None:
    """What inference needs besides the weights: classes, feature size and normalisation."""
    info = {
        "class_names": list(ds.class_names),
        "feature_dim": int(ds.feature_dim),
        "frame_rate": float(ds.frame_rate),
        "normalize": config.dataset.normalize,
        "mean": ds.stats.mean.tolist() if ds.stats is not None else None,
        "std": ds.stats.std.tolist() if ds.stats is not None else None,
    }
    (workdir / RUN_INFO).write_text(json.dumps(info, indent=2))


def _tensorboard(workdir: Path):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(workdir / "tensorboard"))


def _log_tensorboard(writer, record: dict) -> None:
    step = record["step"]
    if record["train_loss"] is not None:
        writer.add_scalar("train/loss", record["train_loss"], step)
        writer.add_scalar("train/accuracy", record["train_acc"], step)
    for key in ("wa", "ua", "macro_f1"):
        writer.add_scalar(f"val/{key}", record["val"][key], step)
    writer.flush()
