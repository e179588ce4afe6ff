"""Re-parameterizations as pure functions over variable trees (nested dicts of arrays).

Small math functions on arrays (``fold_linear_chain``, ``orthogonal_expansion``) do the
algebra; ``trees.map_modules`` walks the tree and hands each layer dict to them. Inputs are
never mutated. Host numpy arrays fold in float64, jax arrays (also under ``jax.jit``) in
float32 at highest precision. Paths in messages are '/'-joined, e.g.
``params/block_0/ffn1/fc1/hrf_0/kernel``. ``fold_batchnorm`` lives in ``hrf_jax.bn_fold``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from hrf_jax.bn_fold import fold_batchnorm, fold_bn_into_conv
from hrf_jax.hrf import HRF_NORM_PREFIX, HRF_PREFIX, hrf_width
from hrf_jax.masking import BN_EPSILON
from hrf_jax.trees import (
    Path,
    array_backend,
    check_leaf,
    drop_paths,
    join,
    key_path,
    like,
    map_modules,
)

__all__ = [
    "DEFAULT_EXPAND_PATTERN", "count_params", "expand_hrf", "fold_batchnorm", "fold_linear_chain",
    "hrf_param_mask", "hrf_paths", "merge_hrf", "orthogonal_expansion", "verify_equivalence",
]

Tree = Mapping[str, Any]
DEFAULT_EXPAND_PATTERN = r"(^|/)fc1$"
_HRF_KEY = re.compile(rf"^{HRF_PREFIX}(\d+)$")


# --------------------------------------------------------------------------- math on arrays


def fold_linear_chain(chain: Sequence[tuple[Any, Any | None]]) -> tuple[Any, Any]:
    """One ``(K, b)`` equal to the affine maps ``x -> x @ K_i + b_i`` applied left to right.

    ``K = K_0 @ K_1 @ ..`` and ``b = (b_0 @ K_1 + b_1) @ ..``; a missing bias is zero.
    """
    xp, dtype, mm = array_backend(*(a for layer in chain for a in layer))
    kernel, bias = chain[0]
    kernel = xp.asarray(kernel, dtype)
    bias = xp.zeros(kernel.shape[1], dtype) if bias is None else xp.asarray(bias, dtype)
    for k_next, b_next in chain[1:]:
        k_next = xp.asarray(k_next, dtype)
        kernel, bias = mm(kernel, k_next), mm(bias, k_next)
        if b_next is not None:
            bias = bias + xp.asarray(b_next, dtype)
    return kernel, bias


def orthogonal_expansion(
    kernel: Any, key: jax.Array, width: int, depth: int
) -> tuple[list[Any], Any]:
    """Random factors whose product is ``kernel (d, out)``: ``([Q_0, .., Q_last], host)``.

    ``Q_0 (d, r)`` has orthonormal rows (``Q_0 Q_0^T = I``, needs ``r >= d``), later factors
    are orthogonal ``(r, r)``, and ``host = (Q_0 .. Q_last)^T K`` is ``(r, out)``, so
    ``Q_0 @ .. @ Q_last @ host == K``. A host numpy kernel draws its Gaussians with numpy,
    seeded by ``key``'s bits, so expanding a checkpoint compiles nothing.
    """
    xp, dtype, mm = array_backend(kernel)
    factors = []
    for i, k in enumerate(jax.random.split(key, depth)):
        shape = (width, kernel.shape[0] if i == 0 else width)
        if xp is np:
            gaussian = np.random.default_rng(np.asarray(jax.random.key_data(k))).normal(size=shape)
        else:
            gaussian = jax.random.normal(k, shape, dtype)
        # QR of a (width, rows) Gaussian has orthonormal columns: its transpose, orthonormal rows
        factors.append(xp.linalg.qr(gaussian)[0].T)
    host = xp.asarray(kernel, dtype)
    for q in factors:
        host = mm(q.T, host)
    return factors, host


# --------------------------------------------------------------------------- tree functions


def count_params(tree: Any) -> int:
    """Total number of scalars in a tree (arrays or ``jax.ShapeDtypeStruct`` leaves)."""
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree)))


def _hrf_indices(node: Mapping) -> list[int]:
    return sorted(int(m.group(1)) for k in node if (m := _HRF_KEY.match(str(k))))


def hrf_paths(tree: Tree) -> list[str]:
    """'/'-joined paths of every layer that carries an HRF chain (``hrf_0`` ...)."""
    found: list[str] = []

    def visit(path: Path, node: Mapping) -> Mapping | None:
        if not _hrf_indices(node):
            return None
        found.append(join(path))
        return node

    map_modules(tree, visit)
    return found


def hrf_param_mask(tree: Tree) -> Any:
    """``tree``'s structure with ``True`` at every leaf of a layer that carries an HRF chain
    (factors ``hrf_i``, norms ``hrf_norm_i``, the host's kernel and bias), ``False`` elsewhere;
    how the optimizer finds the HRF parameters (``optimizer.hrf_weight_decay``)."""
    hosts: list[Path] = []

    def visit(path: Path, node: Mapping) -> Mapping | None:
        if not _hrf_indices(node):
            return None
        hosts.append(path)
        return node

    map_modules(tree, visit)
    return jax.tree_util.tree_map_with_path(
        lambda p, _: any(key_path(p)[: len(h)] == h for h in hosts), tree)


def merge_hrf(variables: Tree) -> Tree:
    """deHRF: folds every HRF chain into its host layer's kernel and bias.

    ``fold_linear_chain`` of ``hrf_0 .. hrf_n`` then the host, in Flax's ``(in, out)`` layout,
    cast back to the host's dtypes. A norm ``hrf_norm_i`` is folded into ``hrf_i`` first: a
    per-channel ``scale`` multiplies its columns; an eval-mode BatchNorm (``scale``, ``bias``
    and running ``mean``/``var`` under ``batch_stats``, hence the whole variables dict) is
    affine and folds as in ``fold_batchnorm``, and its statistics are dropped (an emptied
    ``batch_stats`` goes too). Pure and idempotent: a tree without HRF chains comes back
    equal; other collections (``batch_stats`` ...) are carried over unchanged.
    """
    has_params = isinstance(variables, Mapping) and "params" in variables
    stats = variables.get("batch_stats", {}) if has_params else None
    folded: set[Path] = set()  # batch_stats paths of the folded BatchNorms

    def visit(path: Path, node: Mapping) -> Mapping | None:
        return _merge_host(path, node, stats, folded)

    out = map_modules(variables, visit)
    if not folded:
        return out
    items = {k: v for k, v in out.items() if k != "batch_stats"}
    kept = drop_paths(out["batch_stats"], folded)
    if kept:
        items["batch_stats"] = kept
    return like(out, items)


def expand_hrf(
    variables: Tree,
    rng: jax.Array,
    ratio: float,
    depth: int = 1,
    *,
    pattern: str = DEFAULT_EXPAND_PATTERN,
    base: str = "in",
    bias: bool = True,
) -> Tree:
    """Inserts function-preserving HRF chains into every layer whose path matches ``pattern``.

    Each matched ``{kernel, bias}`` gets the ``orthogonal_expansion`` of its kernel, so
    ``merge_hrf(expand_hrf(v, ...)) == v`` up to rounding; HRF biases start at zero. Needs
    ``r >= d``. The result loads into the same model built with ``hrf_ratio=ratio,
    hrf_depth=depth, hrf_base=base`` (and no ``hrf_norm``). ``hrf_init="function_preserving"``
    is the same factorization drawn at init, of the plain model's init.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    regex = re.compile(pattern)
    expanded = 0

    def visit(path: Path, node: Mapping) -> Mapping | None:
        nonlocal expanded
        if "kernel" not in node or not regex.search("/".join(path)):
            return None
        if _hrf_indices(node):
            raise ValueError(f"{join(path)} already carries an HRF chain; merge_hrf it first")
        expanded += 1
        key = jax.random.fold_in(rng, expanded)
        return _expand_host(path, node, key, ratio, depth, base, bias)

    out = map_modules(variables, visit)
    if not expanded:
        raise ValueError(f"expand_hrf: no layer path matched pattern {pattern!r}")
    return out


def verify_equivalence(
    model_hrf: Any, model_plain: Any, variables: Tree, *inputs: Any, **apply_kwargs: Any
) -> dict[str, Any]:
    """Runs the HRF model on ``variables`` and the plain model on ``merge_hrf(variables)``.

    Float32 at highest matmul precision. Returns max abs/relative output error, parameter
    counts (HRF, merged, plain), and whether the merged tree has the plain model's exact
    structure and shapes. ``apply_kwargs`` (e.g. ``train=False``) go to both models.
    """
    with jax.default_matmul_precision("highest"):
        merged = merge_hrf(variables)
        # one compiled program per model: eager application compiles every op on its own
        y_hrf, y_plain = (
            np.asarray(jax.jit(functools.partial(model.apply, **apply_kwargs))(tree, *inputs),
                       np.float64)
            for model, tree in ((model_hrf, variables), (model_plain, merged)))
    plain_vars = jax.eval_shape(
        lambda: model_plain.init(jax.random.PRNGKey(0), *inputs, **apply_kwargs)
    )
    shapes = lambda tree: jax.tree_util.tree_map(lambda a: tuple(a.shape), dict(tree))
    abs_err = float(np.max(np.abs(y_hrf - y_plain))) if y_hrf.size else 0.0
    scale = float(np.max(np.abs(y_hrf))) if y_hrf.size else 0.0
    return {
        "max_abs_err": abs_err,
        "max_rel_err": abs_err / scale if scale > 0 else abs_err,
        "params_hrf": count_params(variables.get("params", variables)),
        "params_merged": count_params(merged.get("params", merged)),
        "params_plain": count_params(plain_vars.get("params", plain_vars)),
        "structure_match": shapes(merged) == shapes(plain_vars),
        "hrf_layers": len(hrf_paths(variables)),
    }


# --------------------------------------------------------------------------- layer dicts


def _dense(node: Any, path: Path) -> tuple[Any, Any]:
    """(kernel, bias-or-None) of a Dense-like dict, validated."""
    if not isinstance(node, Mapping):
        raise ValueError(f"{join(path)} should be a dict with 'kernel', got {type(node).__name__}")
    if "kernel" not in node:
        raise ValueError(f"{join(path)} has no 'kernel' (keys: {sorted(node)})")
    kernel, bias = node["kernel"], node.get("bias")
    check_leaf(kernel, (*path, "kernel"))
    if kernel.ndim != 2:
        raise ValueError(f"{join(path)}/kernel must be 2-D (in, out), got shape {kernel.shape}")
    if bias is not None:
        check_leaf(bias, (*path, "bias"))
        if tuple(bias.shape) != (kernel.shape[1],):
            raise ValueError(
                f"{join(path)}/bias has shape {tuple(bias.shape)}, "
                f"expected ({kernel.shape[1]},) to match kernel {tuple(kernel.shape)}"
            )
    return kernel, bias


def _merge_host(path: Path, node: Mapping, stats: Mapping | None, folded: set[Path]
                ) -> Mapping | None:
    """The folded ``{kernel, bias}`` of a layer dict holding ``hrf_0..``; None for others.
    ``stats``: the ``batch_stats`` collection, for BatchNorm norms (whose paths it adds to
    ``folded``)."""
    indices = _hrf_indices(node)
    if not indices:
        return None
    if indices != list(range(len(indices))):
        raise ValueError(f"{join(path)}: HRF layers must be hrf_0..hrf_n, found {indices}")
    paths = [(*path, f"{HRF_PREFIX}{i}") for i in indices] + [path]
    norm_keys = {f"{HRF_NORM_PREFIX}{i}" for i in indices}
    extra = sorted({str(k) for k in node} - {"kernel", "bias"} - {p[-1] for p in paths[:-1]}
                   - norm_keys)
    if extra:
        raise ValueError(f"{join(path)}: unexpected keys {extra} beside an HRF chain")
    chain = [_dense(node[p[-1]], p) for p in paths[:-1]] + [_dense(node, path)]
    for i in indices:
        if f"{HRF_NORM_PREFIX}{i}" in node:
            chain[i] = _fold_norm(chain[i], node[f"{HRF_NORM_PREFIX}{i}"],
                                  (*path, f"{HRF_NORM_PREFIX}{i}"), stats, folded)
    for (k_a, _), (k_b, _), p_a, p_b in zip(chain, chain[1:], paths, paths[1:], strict=False):
        if k_a.shape[1] != k_b.shape[0]:
            raise ValueError(
                f"HRF chain does not compose: {join(p_a)}/kernel {tuple(k_a.shape)} "
                f"then {join(p_b)}/kernel {tuple(k_b.shape)}"
            )
    host_kernel, host_bias = chain[-1]
    if host_bias is None and any(b is not None for _, b in chain[:-1]):
        raise ValueError(
            f"{join(path)} has no 'bias' but its HRF layers do: the folded bias has nowhere "
            f"to go (kernel {tuple(host_kernel.shape)})"
        )
    kernel, bias = fold_linear_chain(chain)
    out = {"kernel": kernel.astype(host_kernel.dtype)}
    if host_bias is not None:
        out["bias"] = bias.astype(host_bias.dtype)
    return like(node, out)


def _fold_norm(layer: tuple[Any, Any], norm: Any, path: Path, stats: Mapping | None,
               folded: set[Path]) -> tuple[Any, Any]:
    """``hrf_i``'s ``(kernel, bias)`` followed by its norm at ``path``, as one affine map."""
    kernel, bias = layer
    width = kernel.shape[1]
    if not isinstance(norm, Mapping) or set(norm) not in ({"scale"}, {"scale", "bias"}):
        keys = sorted(norm) if isinstance(norm, Mapping) else type(norm).__name__
        raise ValueError(f"{join(path)} should hold 'scale' (per-channel scale) or 'scale' and "
                         f"'bias' (BatchNorm), got {keys}")
    arrays = {(*path, k): v for k, v in norm.items()}
    if "bias" in norm:  # BatchNorm: its running statistics sit under batch_stats
        if stats is None or path[0] != "params":
            raise ValueError(f"{join(path)} is a BatchNorm: merge_hrf needs the whole variables "
                             "dict with its 'batch_stats' (running mean and var)")
        node: Any = stats
        for key in path[1:]:
            node = node.get(key) if isinstance(node, Mapping) else None
        if not isinstance(node, Mapping) or not {"mean", "var"} <= set(node):
            raise ValueError(f"batch_stats/{join(path[1:])} with 'mean' and 'var' is missing; "
                             "the BatchNorm cannot be folded without its running statistics")
        arrays.update({("batch_stats", *path[1:], k): node[k] for k in ("mean", "var")})
    for where, arr in arrays.items():
        check_leaf(arr, where)
        if tuple(arr.shape) != (width,):
            raise ValueError(f"{join(where)} has shape {tuple(arr.shape)}, expected ({width},) "
                             f"to match the HRF kernel {tuple(kernel.shape)}")
    if "bias" not in norm:
        xp, dtype, _ = array_backend(kernel, bias, norm["scale"])
        scale = xp.asarray(norm["scale"], dtype)
        return (xp.asarray(kernel, dtype) * scale,
                None if bias is None else xp.asarray(bias, dtype) * scale)
    folded.add(path[1:])
    return fold_bn_into_conv(kernel, bias, norm["scale"], norm["bias"], node["mean"], node["var"],
                             BN_EPSILON)


def _expand_host(
    path: Path, node: Mapping, key: jax.Array, ratio: float, depth: int, base: str, bias: bool
) -> Mapping:
    """``node`` ({kernel, bias}) with an ``orthogonal_expansion`` chain in front of it."""
    unexpected = sorted(str(k) for k in node if k not in ("kernel", "bias"))
    if unexpected:
        raise ValueError(f"{join(path)}: unexpected keys {unexpected} in a Dense layer")
    kernel, host_bias = _dense(node, path)
    d_in, d_out = kernel.shape
    width = hrf_width(d_in, d_out, ratio, base)
    if width < d_in:
        raise ValueError(
            f"{join(path)}: HRF width {width} < input width {d_in}; an exact factorization "
            "of a full-rank kernel needs r >= d (raise the ratio or use base='in')"
        )
    factors, host = orthogonal_expansion(kernel, key, width, depth)
    xp = array_backend(kernel)[0]
    out: dict[str, Any] = {}
    for i, q in enumerate(factors):
        layer = {"kernel": q.astype(kernel.dtype)}
        if bias and host_bias is not None:
            layer["bias"] = xp.zeros((width,), host_bias.dtype)
        out[f"{HRF_PREFIX}{i}"] = layer
    out["kernel"] = host.astype(kernel.dtype)
    if host_bias is not None:
        out["bias"] = host_bias
    return like(node, out)
