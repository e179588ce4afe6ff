"""``fit_population(configs, workdirs)``: K seeds of one run trained by one compiled step.

The K configs may differ only in ``train.seed``, so the members share one model shape, one
optimizer, one corpus and one XLA program (``hrf_jax.population``: ``jax.vmap`` of the
single-run train step over a stacked ``TrainState`` and per-member batches ``(K, B, ...)``).
Everything else is per member and as ``hrf_jax.loop.fit`` does it for a separate run: its
``TrainLoader`` (seeded with its ``train.seed``, so the same data order and crops), its init
key ``PRNGKey(seed)`` and dropout rngs, its best-on-validation selection, its checkpoints,
metrics log and ``final.json``. Each member's workdir is therefore an ordinary run folder
(``experiments``, ``hrf-jax eval`` and ``merge`` read it), and its numbers equal a separate
run's up to float rounding (the vmapped program rounds differently).

Resume: a member whose ``final.json`` holds all epochs is skipped (its summary is returned);
the others restore their newest checkpoints. The members train in lockstep, but a kill can
land between the K asynchronous saves, so members can be found at different steps: then
all resume from the smallest step (a member ahead is rewound to its checkpoint at that step,
and its ``last``/``best`` checkpoints after it are deleted; training is deterministic, so it
recomputes them; on an accelerator with non-deterministic reductions the replay may differ
in rounding, as any rerun does). A member ahead that no longer holds a checkpoint at that
step (``keep_last`` rotated it away) is refused with a message naming its workdir.

Differences from K ``fit`` calls, all within float rounding or bookkeeping: the members'
inits are one jit-compiled ``create_state`` (``fit`` runs it eagerly), the train step is the
vmapped one, and each history record's ``seconds`` is the population's epoch time.

Single process only. On CPU the population is not faster than sequential runs
(BENCHMARKS.md, "Populations"); it pays on an accelerator with small models.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization
from tqdm.auto import tqdm

from hrf_jax.checkpoint import RunCheckpoints, _placed
from hrf_jax.config import _flatten, validate
from hrf_jax.data import TrainLoader
from hrf_jax.loop import (
    _final_report,
    _open_dataset,
    _restore_running,
    _round_batch,
    _say,
    _select_and_save,
    _Training,
)
from hrf_jax.metrics_writer import MetricsWriter
from hrf_jax.population import make_population_step, shard_members, stack_states, unstack_state
from hrf_jax.run import Run
from hrf_jax.train import (
    DataParallel,
    TrainState,
    create_state,
    make_eval_step,
    make_optimizer,
    make_schedule,
)

MEMBER_FIELD = "train.seed"  # the one field the members of a population may differ in


def fit_population(configs: Sequence[ml_collections.ConfigDict],
                   workdirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Trains (or resumes) K runs that differ only in ``train.seed`` with one vmapped step;
    member ``i`` writes ``workdirs[i]`` as ``fit(configs[i], workdirs[i])`` would and its
    summary is ``result[i]``. Finished members are not trained or evaluated again."""
    configs, workdirs = list(configs), [Path(w) for w in workdirs]
    check_population(configs, workdirs)
    runs = []
    for config, workdir in zip(configs, workdirs, strict=True):
        run = Run.create(workdir, config)
        run.save_config()
        runs.append(run)
    summaries: list[dict[str, Any] | None] = [_finished(run) for run in runs]
    todo = [i for i, s in enumerate(summaries) if s is None]
    if not todo:
        return summaries  # type: ignore[return-value]
    members, step_fn = _setup(runs, todo)
    _resume(members)
    population = shard_members(stack_states([m.state for m in members]),
                               members[0].t.parallel)
    for m in members:
        m.state = None  # the population holds the members' states from here on
    steps_per_epoch = len(members[0].t.loader)
    tcfg = members[0].t.tcfg
    for epoch in range(int(members[0].meta["step"]) // steps_per_epoch, tcfg.epochs):
        started = time.perf_counter()
        population, runnings = _train_epoch(members, population, step_fn, epoch)
        seconds = time.perf_counter() - started  # the population's epoch, for every member
        states = _member_states(population, members)
        for member, state, running in zip(members, states, runnings, strict=True):
            member.meta = _select_and_save(member.t, state, member.meta, epoch, running,
                                           seconds)
    for member, state in zip(members, _member_states(population, members), strict=True):
        member.t.checkpoints.wait()
        member.t.checkpoints.close()
        member.t.writer.close()
        summaries[member.index] = _final_report(member.t, state, member.meta)
    return summaries  # type: ignore[return-value]


def check_population(configs: Sequence[ml_collections.ConfigDict],
                     workdirs: Sequence[Path]) -> None:
    """ValueError unless the configs can share one program: every field but ``train.seed``
    equal (shapes, optimizer, data, epochs and the per-run policies all are), one distinct
    workdir each, and a single process."""
    if not configs:
        raise ValueError("fit_population needs at least one config")
    if len(configs) != len(workdirs):
        raise ValueError(f"{len(configs)} configs but {len(workdirs)} workdirs")
    if len({w.resolve() for w in workdirs}) != len(workdirs):
        raise ValueError(f"the members' workdirs must differ: {[str(w) for w in workdirs]}")
    for config in configs:
        validate(config)
    if any(config.train.distributed for config in configs):
        raise ValueError("fit_population runs in a single process; train.distributed is "
                         "not supported (train the members with `hrf-jax train` instead)")
    first = _flatten(configs[0].to_dict())
    for i, config in enumerate(configs[1:], start=1):
        other = _flatten(config.to_dict())
        for field in sorted(set(first) | set(other)):
            if field != MEMBER_FIELD and first.get(field) != other.get(field):
                raise ValueError(
                    f"population members may differ only in {MEMBER_FIELD}: config {i} has "
                    f"{field}={other.get(field)!r}, config 0 has {first.get(field)!r}")


def _finished(run: Run) -> dict[str, Any] | None:
    """The saved summary of a member that has trained all its epochs, as ``fit`` checks."""
    if not run.final.is_file():
        return None
    summary = json.loads(run.final.read_text())
    if len(summary["history"]) < run.config.train.epochs:
        return None
    _say(f"{run.path} has finished its {len(summary['history'])} epochs; final metrics: "
         f"{run.final}")
    return summary


class _Member:
    """One member: the ``loop._Training`` its steps share (its loader, checkpoints and
    writer), its initial state (``fresh()``), its state until stacked, and its meta."""

    def __init__(self, index: int, t: _Training, fresh: Callable[[], TrainState]):
        self.index, self.t, self.fresh = index, t, fresh
        self.state: TrainState | None = fresh()
        self.meta: dict[str, Any] = {"step": 0, "history": [], "best": None}


def _setup(runs: list[Run], todo: list[int]) -> tuple[list[_Member], Any]:
    """``loop._setup`` for the unfinished members, sharing what one program needs once: the
    corpus (opened once), the model, optimizer, the compiled init, train and eval steps."""
    run0 = runs[todo[0]]
    tcfg = run0.config.train
    ds = _open_dataset(run0)
    for i in todo:
        runs[i].save_info(ds)
    model = run0.model()
    parallel = DataParallel()
    batch_size = _round_batch(tcfg.batch_size, parallel)
    loaders = {i: TrainLoader(ds.train, batch_size=batch_size, max_frames=tcfg.max_frames,
                              seed=runs[i].config.train.seed, balanced=tcfg.balanced,
                              host=parallel.host) for i in todo}
    total_steps = tcfg.epochs * len(loaders[todo[0]])
    tx = make_optimizer(run0.config.optimizer, total_steps)
    feats, mask = run0.example_inputs(batch_size, tcfg.max_frames)
    # one compile for all members (an eager Conformer init takes ~10 s on 2 CPU cores)
    init = jax.jit(lambda rng: create_state(model, tx, rng, feats, mask))
    counts = ds.class_counts("train").astype(np.float64)
    class_weights = (counts.sum() / np.maximum(counts, 1) / len(counts)
                     if tcfg.class_weights else None)
    compute_dtype = jnp.bfloat16 if tcfg.compute_dtype == "bfloat16" else jnp.float32
    step_fn = make_population_step(model, tx, parallel, label_smoothing=tcfg.label_smoothing,
                                   class_weights=class_weights, compute_dtype=compute_dtype)
    eval_step = make_eval_step(model, parallel)
    members = []
    for i in todo:
        run = runs[i]
        t = _Training(
            run=run, ds=ds, parallel=parallel, loader=loaders[i], train_step=None,
            eval_step=eval_step,
            checkpoints=RunCheckpoints(run.last_dir, run.best_dir, tcfg.keep_last),
            eval_batch_size=_round_batch(tcfg.eval_batch_size, parallel),
            writer=MetricsWriter(run.path, run.metrics_log,
                                 lr_schedule=make_schedule(run.config.optimizer, total_steps)),
            batch_size=batch_size)
        key = jax.random.PRNGKey(run.config.train.seed)
        members.append(_Member(i, t, lambda key=key: parallel.replicate(init(key))))
    return members, step_fn


def _resume(members: list[_Member]) -> None:
    """Each member's newest checkpoint; members found at different steps all continue from
    the smallest (see the module docstring)."""
    for member in members:
        restored = member.t.checkpoints.restore_latest(member.state)
        if restored is not None:
            member.state, member.meta = restored
    steps = [int(m.meta["step"]) for m in members]
    low = min(steps)
    if low != max(steps):
        _say(f"population members are at steps {steps}; all resume from step {low}")
        for member in members:
            if int(member.meta["step"]) > low:
                _rewind(member, low)
    if low:
        meta = members[0].meta
        _say(f"resuming a population of {len(members)} from step {low} (epoch "
             f"{meta['epoch']}, batch {meta['batch']})")


def _rewind(member: _Member, step: int) -> None:
    """Moves a member ahead back to its checkpoint at ``step`` (its initial state for 0) and
    deletes its ``last`` and ``best`` checkpoints after ``step``."""
    last, best = member.t.checkpoints.last, member.t.checkpoints.best
    template = member.state
    if step:
        if step not in last.all_steps():
            raise RuntimeError(
                f"{member.t.run.path} is at step {member.meta['step']} and no longer holds a "
                f"checkpoint at step {step}, where the other members of its population are; "
                "resume it on its own (`hrf-jax train`) or remove its checkpoints")
        target = _placed(serialization.to_state_dict(template))
        restored = last.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        member.state = serialization.from_state_dict(template, restored["state"])
        member.meta = dict(restored["meta"])
    else:
        member.state = member.fresh()
        member.meta = {"step": 0, "history": [], "best": None}
    for manager in (last, best):
        for newer in [s for s in manager.all_steps() if s > step]:
            manager.delete(newer)


def _member_states(population: TrainState, members: list[_Member]) -> list[TrainState]:
    """The members' single states, replicated as ``fit``'s state is (on several devices a
    slice of the member-sharded population lives on one device only)."""
    parallel = members[0].t.parallel
    return [parallel.replicate(state) for state in unstack_state(population)]


def _train_epoch(members: list[_Member], population: TrainState, step_fn: Any, epoch: int
                 ) -> tuple[TrainState, list[dict[str, Any] | None]]:
    """``loop._train_epoch`` for all members at once: batch ``b`` of every member's own
    loader, stacked; per-member running sums, step scalars and mid-epoch checkpoints. Returns
    the population and each member's epoch sums, and advances each ``meta["step"]``."""
    t0 = members[0].t
    tcfg = t0.tcfg
    steps_per_epoch = len(t0.loader)
    step = int(members[0].meta["step"])
    start = step - epoch * steps_per_epoch
    running = None
    if start:  # sums of the interrupted epoch so far, so a resumed epoch logs the same numbers
        running = jax.tree_util.tree_map(
            lambda *xs: jnp.stack(xs), *[_restore_running(m.meta.get("running"))
                                         for m in members])
    bar = tqdm(total=steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{tcfg.epochs} "
               f"(population of {len(members)})", disable=not tcfg.progress, leave=False)
    for m in members:
        m.t.writer.start_window(step)
    window = None
    iterators = [m.t.loader.epoch(epoch, start=start) for m in members]
    for i in range(start, steps_per_epoch):
        batches = [next(it) for it in iterators]
        stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
        population, stats = step_fn(population, shard_members(stacked, t0.parallel))
        weighted = {"loss": stats["loss"] * stats["count"], "correct": stats["correct"],
                    "count": stats["count"]}
        running = weighted if running is None else jax.tree_util.tree_map(
            jnp.add, running, weighted)
        window = weighted if window is None else jax.tree_util.tree_map(
            jnp.add, window, weighted)
        step += 1
        bar.update(1)
        if (i + 1) % tcfg.log_every_steps == 0 or i + 1 == steps_per_epoch:
            got, win = jax.device_get((running, window))
            bar.set_postfix(loss=f"{np.mean(got['loss'] / got['count']):.3f}")
            for k, m in enumerate(members):
                m.t.writer.step_scalars(step, float(win["loss"][k] / win["count"][k]),
                                        float(win["correct"][k] / win["count"][k]),
                                        m.t.batch_size)
            window = None
        every = tcfg.save_every_steps
        if every and step % every == 0 and i + 1 < steps_per_epoch:
            sums = jax.device_get(running)
            for k, (m, state) in enumerate(zip(members, _member_states(population, members),
                                               strict=True)):
                mine = {key: value[k].item() for key, value in sums.items()}
                m.t.checkpoints.save(state, {**m.meta, "step": step, "epoch": epoch,
                                             "batch": i + 1, "running": mine})
    bar.close()
    for m in members:
        m.meta["step"] = step
    if running is None:
        return population, [None] * len(members)
    return population, [jax.tree_util.tree_map(lambda x, k=k: x[k], running)
                        for k in range(len(members))]
