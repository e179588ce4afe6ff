"""Train state, jit-compiled train/eval steps shared by every backbone, and data parallelism.

One ``Mesh`` over all devices with a ``data`` axis: the batch is sharded along it and the
state is replicated, so one device and many devices (and many hosts) run the same code.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hrf_jax.config import OPTIMIZERS, parse_lr_scale
from hrf_jax.reparam import hrf_param_mask
from hrf_jax.trees import key_path
from hrf_jax.xla_options import eval_compiler_options, train_compiler_options

Batch = dict[str, np.ndarray]


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data position (which follows from ``step``)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


# the FFN's first linear layer (FeedForward's ``fc1``) in every backbone, kernel and bias
FFN_FIRST_LAYER_GLOB = "*/fc1/*"


def lr_control_scale(ratio: float = 4, k: float | None = None) -> str:
    """``optimizer.lr_scale`` of the lr control: the plain model with the FFN's first linear
    layer at ``k`` times the lr (default ``k = 1 + ratio``).

    One SGD/Adam step on an HRF x4 chain moves the merged fc1 weights about 5x as far as
    the same step moves a plain fc1 (issue #13), and re-parameterization equals per-parameter
    gradient multipliers (RepOptimizer): the control says whether HRF gains more than that.
    """
    return f"{FFN_FIRST_LAYER_GLOB}={1 + ratio if k is None else k:g}"


def lr_scale_factors(params: Any, rules: Sequence[tuple[str, float]]) -> Any:
    """``params``' structure with each leaf's lr multiplier: the factor of the first glob of
    ``rules`` (``config.parse_lr_scale``) matching its '/'-joined path, else 1.0. A glob that
    matches no parameter is an error (a misspelt pattern would silently change nothing)."""
    used = set()

    def factor(path: tuple[Any, ...], _: Any) -> float:
        name = "/".join(key_path(path))
        for i, (glob, value) in enumerate(rules):
            if fnmatch.fnmatchcase(name, glob):
                used.add(i)
                return value
        return 1.0

    factors = jax.tree_util.tree_map_with_path(factor, params)
    unused = [glob for i, (glob, _) in enumerate(rules) if i not in used]
    if unused:
        raise ValueError(f"optimizer.lr_scale: {unused} match no parameter path "
                         "(paths look like block_0/ffn1/fc1/kernel)")
    return factors


def scale_by_path(rules: Sequence[tuple[str, float]]) -> optax.GradientTransformation:
    """Multiplies each leaf's update by its ``lr_scale_factors`` factor. Placed after the
    learning rate, it equals a per-group lr for SGD (momentum is linear) and for AdamW (whose
    decoupled decay is scaled by the lr too)."""

    def init_fn(params: Any) -> optax.EmptyState:
        lr_scale_factors(params, rules)  # refuses unmatched globs before training starts
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, Any]:
        factors = lr_scale_factors(updates, rules)
        return jax.tree_util.tree_map(lambda u, f: u if f == 1.0 else u * f, updates,
                                      factors), state

    return optax.GradientTransformation(init_fn, update_fn)


def make_schedule(cfg: Any, total_steps: int) -> optax.Schedule:
    """The lr per step: AdamW warms up linearly over ``warmup_fraction`` of the steps, both
    then follow a cosine from ``lr`` to ``end_lr_fraction * lr`` at ``total_steps``
    (negative fraction: 0.01 for AdamW, 0 for SGD, as before the field existed)."""
    total_steps = max(int(total_steps), 2)
    end = cfg.get("end_lr_fraction", -1.0)
    if end < 0:
        end = 1e-2 if cfg.name == "adamw" else 0.0
    if cfg.name == "adamw":
        warmup = min(max(int(cfg.warmup_fraction * total_steps), 1), total_steps - 1)
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, total_steps,
                                                  end_value=cfg.lr * end)
    return optax.cosine_decay_schedule(cfg.lr, total_steps, alpha=end)


def make_optimizer(cfg: Any, total_steps: int) -> optax.GradientTransformation:
    """AdamW + linear warm-up + cosine decay (default), or SGD momentum + cosine
    (``make_schedule``); gradients clipped to global norm ``clip_norm`` (0: not clipped).

    Weight decay applies to kernels only (``ndim >= 2``), not to biases and norms; the HRF
    factors and their host kernels (``reparam.hrf_param_mask``) decay by
    ``hrf_weight_decay`` (negative: ``weight_decay``). ``lr_scale`` multiplies the lr of the
    matching parameters (``scale_by_path``). With the defaults the transform and its state
    are those of earlier versions, so their checkpoints resume.
    """
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name must be one of {OPTIMIZERS}, got {cfg.name!r}")
    schedule = make_schedule(cfg, total_steps)
    wd, hrf_wd = cfg.weight_decay, cfg.get("hrf_weight_decay", -1.0)
    decay_mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)
    one_decay = hrf_wd < 0 or hrf_wd == wd
    if one_decay:
        decay = optax.add_decayed_weights(wd, mask=decay_mask)
    else:
        def group_mask(hrf: bool) -> Callable[[Any], Any]:
            return lambda params: jax.tree_util.tree_map(
                lambda p, h: p.ndim >= 2 and h == hrf, params, hrf_param_mask(params))

        decay = optax.chain(optax.add_decayed_weights(wd, mask=group_mask(False)),
                            optax.add_decayed_weights(hrf_wd, mask=group_mask(True)))
    if cfg.name == "adamw":
        # optax.adamw is this chain with one decay; written out for two decay groups
        opt = (optax.adamw(schedule, weight_decay=wd, mask=decay_mask) if one_decay else
               optax.chain(optax.scale_by_adam(), decay, optax.scale_by_learning_rate(schedule)))
    else:
        opt = optax.chain(decay, optax.sgd(schedule, momentum=cfg.momentum))
    rules = parse_lr_scale(cfg.get("lr_scale", ""))
    if rules:
        opt = optax.chain(opt, scale_by_path(rules))
    if cfg.clip_norm and cfg.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    return opt


def create_state(
    model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, feats: Any, mask: Any
) -> TrainState:
    """Initialises parameters from example ``feats (B, T, F)`` / ``mask (B, T)``."""
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init(init_rng, feats, mask, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=state_rng,
    )


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def _cast(tree: Any, dtype: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


class DataParallel:
    """A 1-D device mesh; batches are split along it, the train state is replicated."""

    def __init__(self, devices: Iterable[jax.Device] | None = None):
        self.mesh = Mesh(np.asarray(list(devices or jax.devices())), ("data",))
        self.batch = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    @property
    def size(self) -> int:
        return self.mesh.size

    @property
    def platform(self) -> str:
        """``"cpu"``, ``"gpu"`` or ``"tpu"``: the platform of the mesh's devices."""
        return self.mesh.devices.flat[0].platform

    @property
    def host(self) -> tuple[int, int]:
        """``(index, count)`` of this process, for loaders that read one host's share."""
        return jax.process_index(), jax.process_count()

    def put_batch(self, batch: Batch, *, local: bool = False) -> dict[str, jax.Array]:
        """Host batch -> global sharded arrays. ``local=False``: every host holds the same
        global batch and contributes its slice; ``local=True``: ``batch`` is already this
        host's slice (``TrainLoader(host=...)``), the hosts' slices in process order."""
        n_proc, pid = jax.process_count(), jax.process_index()
        devices = self.size // n_proc if local else self.size
        out = {}
        for key, value in batch.items():
            if value.shape[0] % devices:
                raise ValueError(
                    f"batch dimension {value.shape[0]} of '{key}' is not divisible by the "
                    f"{devices} devices; choose a batch size that is"
                )
            mine = value if local or n_proc == 1 else np.array_split(value, n_proc)[pid]
            out[key] = jax.make_array_from_process_local_data(self.batch, mine)
        return out

    def replicate(self, tree: Any) -> Any:
        return jax.device_put(tree, self.replicated)


StepFn = Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]


def train_step_fn(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    label_smoothing: float = 0.0,
    class_weights: np.ndarray | None = None,
    compute_dtype: Any = jnp.float32,
) -> StepFn:
    """The pure, un-jitted step of ``make_train_step``, for callers that transform it further
    (``hrf_jax.population`` vmaps it over the members of a population)."""
    weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

    def loss_fn(params, batch_stats, batch, dropout_rng):
        feats = batch["feats"].astype(compute_dtype)
        variables = _variables(_cast(params, compute_dtype), batch_stats)
        logits, updates = model.apply(
            variables, feats, batch["mask"], train=True,
            rngs={"dropout": dropout_rng}, mutable=["batch_stats"],
        )
        logits = logits.astype(jnp.float32)
        num_classes = logits.shape[-1]
        targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes),
                                      label_smoothing)
        per_example = optax.softmax_cross_entropy(logits, targets)
        w = jnp.ones_like(per_example) if weights is None else weights[batch["label"]]
        loss = jnp.sum(per_example * w) / jnp.sum(w)
        return loss, (logits, updates.get("batch_stats", batch_stats))

    def step(state: TrainState, batch: dict[str, jax.Array]):
        rng, dropout_rng = jax.random.split(state.rng)
        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, batch, dropout_rng
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        batch_stats = _cast(batch_stats, jnp.float32)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state, rng=rng)
        correct = jnp.sum(jnp.argmax(logits, -1) == batch["label"])
        stats = {"loss": loss, "correct": correct, "count": jnp.asarray(logits.shape[0])}
        return new_state, stats

    return step


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    parallel: DataParallel,
    *,
    label_smoothing: float = 0.0,
    class_weights: np.ndarray | None = None,
    compute_dtype: Any = jnp.float32,
    compiler_options: dict[str, str] | None = None,
) -> StepFn:
    """``train_step(state, batch) -> (state, {"loss", "correct", "count"})``, jit-compiled once
    per batch shape, state buffers donated. ``compiler_options``: XLA options of the step;
    ``None`` takes those the model asks for on this platform (``hrf_jax.xla_options``), ``{}``
    XLA's defaults. Parameters stay float32; with ``compute_dtype=bfloat16`` the
    forward/backward pass runs in bf16."""
    if compiler_options is None:
        compiler_options = train_compiler_options(model, parallel.platform)
    step = train_step_fn(model, tx, label_smoothing=label_smoothing,
                         class_weights=class_weights, compute_dtype=compute_dtype)
    return jax.jit(
        step,
        in_shardings=(parallel.replicated, parallel.batch),
        out_shardings=(parallel.replicated, parallel.replicated),
        donate_argnums=(0,),
        compiler_options=compiler_options,
    )


def make_eval_step(
    model: nn.Module, parallel: DataParallel, *, compiler_options: dict[str, str] | None = None
) -> Callable[[Any, Any, jax.Array, jax.Array], jax.Array]:
    """``eval_step(params, batch_stats, feats, mask) -> probabilities (B, C)`` in eval mode.
    ``compiler_options``: ``None`` takes those the model asks for its inference on this
    platform (``hrf_jax.xla_options``), ``{}`` XLA's defaults."""
    if compiler_options is None:
        compiler_options = eval_compiler_options(model, parallel.platform)

    def step(params, batch_stats, feats, mask):
        logits = model.apply(_variables(params, batch_stats), feats, mask, train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    return jax.jit(
        step,
        in_shardings=(parallel.replicated, parallel.replicated, parallel.batch, parallel.batch),
        out_shardings=parallel.replicated,
        compiler_options=compiler_options,
    )


def predict_source(
    eval_step: Callable, params: Any, batch_stats: Any, loader: Iterable[Batch],
    parallel: DataParallel, num_items: int, num_classes: int,
) -> np.ndarray:
    """Probabilities ``(N, C)`` for every utterance of an ``EvalLoader`` reading this host's
    share (``host=parallel.host``); chunks of a long utterance are averaged. The eval step
    gathers every host's rows, so each process gets the whole split. Device results are
    fetched once, at the end."""
    pending = []
    for batch in loader:
        placed = parallel.put_batch({"feats": batch["feats"], "mask": batch["mask"]},
                                    local=True)
        probs = eval_step(params, batch_stats, placed["feats"], placed["mask"])
        pending.append((probs, batch["index"], batch["valid"]))
    sums = np.zeros((num_items, num_classes), np.float64)
    counts = np.zeros(num_items, np.int64)
    for probs, index, valid in pending:
        probs = np.asarray(jax.device_get(probs), np.float64)
        np.add.at(sums, index[valid], probs[valid])
        np.add.at(counts, index[valid], 1)
    if np.any(counts == 0):
        missing = np.flatnonzero(counts == 0)[:5].tolist()
        raise RuntimeError(f"evaluation loader skipped utterances {missing}...")
    return sums / counts[:, None]
