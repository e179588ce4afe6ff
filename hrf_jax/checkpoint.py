"""Orbax checkpoints of a run: the last N states and the best one on validation data.

Two folders of a run (``Run.last_dir``, ``Run.best_dir``): the last N states, for resuming,
and the one selected on the validation split, each as ``<folder>/<step>/``. Each holds the
train state and a JSON ``meta`` (data position, history, best score). A checkpoint that
fails to restore is reported and skipped in favour of the one before it.

On many hosts every process calls the same methods: orbax writes each step into a temporary
folder and renames it only after all processes have written their part (a killed save leaves
no step folder, and the next start removes its leftovers). Each manager syncs the processes
under barrier keys of its own, so ``last`` and ``best`` may save the same step at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import serialization

from hrf_jax.logs import get_logger

_ITEMS = ("state", "meta")


def _manager(directory: Path, keep: int, name: str, *, cleanup: bool = False
             ) -> ocp.CheckpointManager:
    """``name`` prefixes the manager's barrier keys (two managers saving one step at once must
    not share them); ``cleanup`` removes the temporary folders of saves a kill interrupted."""
    sync = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=cleanup,
                                           multiprocessing_options=sync)
    return ocp.CheckpointManager(directory.absolute(), options=options, item_names=_ITEMS)


class RunCheckpoints:
    """The ``last`` and ``best`` managers of one run."""

    def __init__(self, last_dir: str | Path, best_dir: str | Path, keep_last: int = 2):
        self.last = _manager(Path(last_dir), max(keep_last, 1), "last", cleanup=True)
        self.best = _manager(Path(best_dir), 1, "best", cleanup=True)

    def save(self, state: Any, meta: dict, *, best: bool = False) -> None:
        """Saves ``state`` (a pytree, e.g. ``TrainState``) at its step, asynchronously."""
        step = int(meta["step"])
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(serialization.to_state_dict(state)),
            meta=ocp.args.JsonSave(meta),
        )
        self.last.save(step, args=args, force=True)
        if best:
            self.best.save(step, args=args, force=True)

    def restore_latest(self, template: Any) -> tuple[Any, dict] | None:
        """Newest readable checkpoint of ``last`` restored into ``template``'s structure."""
        return _restore_newest(self.last, template)

    def wait(self) -> None:
        self.last.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.last.close()
        self.best.close()


def restore_state(directory: str | Path, template: Any) -> tuple[Any, dict]:
    """Newest readable checkpoint in ``directory`` (``checkpoints/`` or ``best/``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {directory}")
    manager = _manager(directory, 1_000_000, "restore")
    try:
        found = _restore_newest(manager, template)
    finally:
        manager.close()
    if found is None:
        raise FileNotFoundError(f"no readable checkpoint in {directory}")
    return found


def _placed(target: Any) -> Any:
    """Leaves without a sharding (an ``eval_shape`` template) restore onto this process's
    first device: a checkpoint written by many processes names their devices, which a later
    single process (merge, eval) does not have."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device)
        return x

    return jax.tree_util.tree_map(leaf, target)


def _restore_newest(manager: ocp.CheckpointManager, template: Any) -> tuple[Any, dict] | None:
    target = _placed(serialization.to_state_dict(template))
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
                ),
            )
            state = serialization.from_state_dict(template, restored["state"])
            return state, dict(restored["meta"])
        except Exception as err:  # any unreadable file means: try the previous checkpoint
            where = Path(manager.directory) / str(step)
            get_logger().warning(
                f"checkpoint {where} is unreadable ({type(err).__name__}: "
                f"{str(err)[:200]}); falling back to an earlier one"
            )
    return None
