"""Populations: K models of one shape (seeds of one cell) trained by one compiled step.

Every leaf of a population ``TrainState`` carries a leading member axis K: each member keeps
its own parameters, optimizer state, BatchNorm statistics, step count and dropout rng. The
population step is ``jax.vmap`` of the single-member step of ``hrf_jax.train`` over that axis
and over per-member batches ``(K, B, ...)``, so it computes what K separate runs compute (up
to float rounding) in one XLA program. The member axis is sharded over the mesh of a
``DataParallel`` (K must be a multiple of its device count; on one device, any K); a member's
batch is never split. Single process only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hrf_jax.train import DataParallel, StepFn, TrainState, create_state, train_step_fn
from hrf_jax.xla_options import eval_compiler_options, train_compiler_options


def stack_states(states: Sequence[TrainState]) -> TrainState:
    """K single-member states -> one population state (leading member axis)."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)


def population_size(state: TrainState) -> int:
    """K, the number of members of a population state."""
    return int(state.step.shape[0])


def unstack_state(state: TrainState) -> list[TrainState]:
    """A population state -> its K single-member states (to checkpoint or evaluate each)."""
    return [jax.tree_util.tree_map(lambda x, i=i: x[i], state)
            for i in range(population_size(state))]


def create_population(
    model: nn.Module, tx: optax.GradientTransformation, rngs: Sequence[jax.Array], feats: Any,
    mask: Any,
) -> TrainState:
    """The stacked ``create_state`` of each key in ``rngs``: member ``i`` starts as a
    separate run seeded with ``rngs[i]`` would. The init is jit-compiled once for all
    members (an eager Conformer init takes ~10 s on 2 CPU cores)."""
    init = jax.jit(lambda rng: create_state(model, tx, rng, feats, mask))
    return stack_states([init(rng) for rng in rngs])


def shard_members(tree: Any, parallel: DataParallel) -> Any:
    """Places a population state or batches with the member axis split over the mesh."""
    k = jax.tree_util.tree_leaves(tree)[0].shape[0]
    if k % parallel.size:
        raise ValueError(f"{k} members cannot be split over {parallel.size} devices; "
                         "choose a multiple of the device count")
    return jax.device_put(tree, parallel.batch)


def make_population_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    parallel: DataParallel,
    *,
    label_smoothing: float = 0.0,
    class_weights: np.ndarray | None = None,
    compute_dtype: Any = jnp.float32,
    compiler_options: dict[str, str] | None = None,
) -> StepFn:
    """``step(states, batches) -> (states, stats)``: the train step of ``make_train_step``
    for every member at once. ``batches`` hold ``(K, B, ...)`` arrays; each stat is ``(K,)``.
    Compiled once per (K, batch shape) with ``compiler_options`` as in ``make_train_step``;
    the population state's buffers are donated."""
    if compiler_options is None:
        compiler_options = train_compiler_options(model, parallel.platform)
    step = jax.vmap(train_step_fn(model, tx, label_smoothing=label_smoothing,
                                  class_weights=class_weights, compute_dtype=compute_dtype))
    members = parallel.batch  # PartitionSpec("data") splits the leading (member) axis
    return jax.jit(step, in_shardings=(members, members), out_shardings=(members, members),
                   donate_argnums=(0,), compiler_options=compiler_options)


def make_population_eval_step(
    model: nn.Module, parallel: DataParallel, *, compiler_options: dict[str, str] | None = None
) -> Callable[[Any, Any, jax.Array, jax.Array], jax.Array]:
    """``eval_step(params, batch_stats, feats, mask) -> probabilities (K, B, C)``: every
    member, in eval mode, on the same batch ``feats (B, T, F)`` / ``mask (B, T)`` (the
    members of one cell share their validation and test splits). ``compiler_options`` as in
    ``make_eval_step``."""
    if compiler_options is None:
        compiler_options = eval_compiler_options(model, parallel.platform)

    def one(params, batch_stats, feats, mask):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, feats, mask,
                             train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    return jax.jit(
        jax.vmap(one, in_axes=(0, 0, None, None)),
        in_shardings=(parallel.batch, parallel.batch, parallel.replicated, parallel.replicated),
        out_shardings=parallel.batch,
        compiler_options=compiler_options,
    )
