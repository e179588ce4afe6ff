"""Re-parameterizations as pure functions over variable trees (nested dicts of arrays).

Every function here takes a tree and returns a new one; inputs are never mutated.
They work on host numpy arrays and on jax arrays, also under ``jax.jit``.
Paths in messages are '/'-joined, e.g. ``params/block_0/ffn1/fc1/hrf_0/kernel``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hrf_jax.layers import HRF_PREFIX, hrf_width

Tree = Mapping[str, Any]
_HRF_KEY = re.compile(rf"^{HRF_PREFIX}(\d+)$")
_HOST_KEYS = {"kernel", "bias"}
DEFAULT_EXPAND_PATTERN = r"(^|/)fc1$"


# --------------------------------------------------------------------------- walking


def _join(path: tuple[str, ...]) -> str:
    return "/".join(path) if path else "<root>"


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray | np.generic | jax.Array | jax.ShapeDtypeStruct)


def _check_leaf(leaf: Any, path: tuple[str, ...]) -> None:
    if not _is_array(leaf):
        raise ValueError(
            f"non-array leaf at {_join(path)}: {type(leaf).__name__} "
            "(variable trees must hold numpy or jax arrays)"
        )


def _hrf_indices(node: Mapping) -> list[int]:
    return sorted(int(m.group(1)) for k in node if (m := _HRF_KEY.match(str(k))))


def _rebuild(node: Any, path: tuple[str, ...], host_fn: Callable | None) -> Any:
    """Copies the tree's containers, applying ``host_fn`` to every HRF host dict."""
    if isinstance(node, Mapping):
        if host_fn is not None and _hrf_indices(node):
            return host_fn(node, path)
        items = {k: _rebuild(v, (*path, str(k)), host_fn) for k, v in node.items()}
        return _like(node, items)
    _check_leaf(node, path)
    return node


def _like(template: Mapping, items: dict) -> Mapping:
    """A new mapping of ``template``'s type (dict or flax FrozenDict) holding ``items``."""
    return items if type(template) is dict else type(template)(items)


def _walk_hosts(node: Any, path: tuple[str, ...], out: list[str]) -> None:
    if isinstance(node, Mapping):
        if _hrf_indices(node):
            out.append(_join(path))
            return
        for k, v in node.items():
            _walk_hosts(v, (*path, str(k)), out)


# --------------------------------------------------------------------------- public


def count_params(tree: Any) -> int:
    """Total number of scalars in a tree (arrays or ``jax.ShapeDtypeStruct`` leaves)."""
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree)))


def hrf_paths(tree: Tree) -> list[str]:
    """'/'-joined paths of every layer that carries an HRF chain (``hrf_0`` ...)."""
    out: list[str] = []
    _walk_hosts(tree, (), out)
    return out


def merge_hrf(variables: Tree) -> Tree:
    """deHRF: folds every HRF chain into its host layer's kernel and bias.

    In Flax's ``(in, out)`` layout ``K = K_0 @ .. @ K_hrf_last @ K_host`` and
    ``b = (b_0 @ K_1 + b_1) @ .. @ K_host + b_host``. The fold runs in float32 (float64
    for host numpy) at highest precision and is cast back to the host kernel's dtype.
    Pure and idempotent: a tree without HRF chains comes back equal; other collections
    (``batch_stats`` ...) are carried over unchanged.
    """
    return _rebuild(variables, (), _fold_host)


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

    The first factor is a random semi-orthogonal ``Q_0 (d, r)`` with ``Q_0 Q_0^T = I``, later
    ones random orthogonal ``(r, r)``; the host kernel becomes ``Q^T K``, so the product is
    exactly ``K`` and ``merge_hrf(expand_hrf(v, ...)) == v`` up to rounding. HRF biases start
    at zero. Needs ``r >= d``. The result loads into the same model built with
    ``hrf_ratio=ratio, hrf_depth=depth, hrf_base=base``.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    regex = re.compile(pattern)
    counter = [0]

    def visit(node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, Mapping):
            joined = "/".join(path)
            if "kernel" in node and regex.search(joined):
                if _hrf_indices(node):
                    raise ValueError(f"{joined} already carries an HRF chain; merge_hrf it first")
                counter[0] += 1
                key = jax.random.fold_in(rng, counter[0])
                return _expand_host(node, path, key, ratio, depth, base, bias)
            return _like(node, {k: visit(v, (*path, str(k))) for k, v in node.items()})
        _check_leaf(node, path)
        return node

    out = visit(variables, ())
    if counter[0] == 0:
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
        y_hrf = np.asarray(model_hrf.apply(variables, *inputs, **apply_kwargs), np.float64)
        y_plain = np.asarray(model_plain.apply(merged, *inputs, **apply_kwargs), np.float64)
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


# --------------------------------------------------------------------------- folding


def _use_jax(*arrays: Any) -> bool:
    return any(isinstance(a, jax.Array) for a in arrays if a is not None)


def _layer(node: Any, path: tuple[str, ...]) -> tuple[Any, Any]:
    """(kernel, bias-or-None) of a Dense-like dict, validated."""
    if not isinstance(node, Mapping):
        raise ValueError(f"{_join(path)} should be a dict with 'kernel', got {type(node).__name__}")
    if "kernel" not in node:
        raise ValueError(f"{_join(path)} has no 'kernel' (keys: {sorted(node)})")
    kernel, bias = node["kernel"], node.get("bias")
    _check_leaf(kernel, (*path, "kernel"))
    if kernel.ndim != 2:
        raise ValueError(f"{_join(path)}/kernel must be 2-D (in, out), got shape {kernel.shape}")
    if bias is not None:
        _check_leaf(bias, (*path, "bias"))
        if tuple(bias.shape) != (kernel.shape[1],):
            raise ValueError(
                f"{_join(path)}/bias has shape {tuple(bias.shape)}, "
                f"expected ({kernel.shape[1]},) to match kernel {tuple(kernel.shape)}"
            )
    return kernel, bias


def _fold_host(node: Mapping, path: tuple[str, ...]) -> Mapping:
    indices = _hrf_indices(node)
    if indices != list(range(len(indices))):
        raise ValueError(f"{_join(path)}: HRF layers must be hrf_0..hrf_n, found {indices}")
    extra = {str(k) for k in node} - _HOST_KEYS - {f"{HRF_PREFIX}{i}" for i in indices}
    if extra:
        raise ValueError(f"{_join(path)}: unexpected keys {sorted(extra)} beside an HRF chain")
    names = [f"{HRF_PREFIX}{i}" for i in indices]
    chain = [_layer(node[n], (*path, n)) for n in names] + [_layer(node, path)]
    labels = [_join((*path, n)) for n in names] + [_join(path)]
    for (k_a, _), (k_b, _), la, lb in zip(chain, chain[1:], labels, labels[1:], strict=False):
        if k_a.shape[1] != k_b.shape[0]:
            raise ValueError(
                f"HRF chain does not compose: {la}/kernel {tuple(k_a.shape)} "
                f"then {lb}/kernel {tuple(k_b.shape)}"
            )
    host_kernel, host_bias = chain[-1]
    if host_bias is None and any(b is not None for _, b in chain[:-1]):
        raise ValueError(
            f"{_join(path)} has no 'bias' but its HRF layers do: the folded bias has nowhere "
            f"to go (kernel {tuple(host_kernel.shape)})"
        )
    kernel, bias = _fold_chain(chain)
    out = {"kernel": kernel.astype(host_kernel.dtype)}
    if host_bias is not None:
        out["bias"] = bias.astype(host_bias.dtype)
    return _like(node, out)


def _fold_chain(chain: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    """Composes affine maps x -> x @ K_i + b_i, left to right."""
    if _use_jax(*(a for pair in chain for a in pair)):
        xp, dtype = jnp, jnp.float32

        def mm(a, b):
            return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
    else:
        xp, dtype, mm = np, np.float64, np.matmul
    kernel = xp.asarray(chain[0][0], dtype)
    bias = xp.zeros((kernel.shape[1],), dtype)
    if chain[0][1] is not None:
        bias = xp.asarray(chain[0][1], dtype)
    for k_next, b_next in chain[1:]:
        k_next = xp.asarray(k_next, dtype)
        bias = mm(bias, k_next)
        if b_next is not None:
            bias = bias + xp.asarray(b_next, dtype)
        kernel = mm(kernel, k_next)
    return kernel, bias


def _expand_host(
    node: Mapping, path: tuple[str, ...], key: jax.Array, ratio: float, depth: int,
    base: str, bias: bool,
) -> Mapping:
    unexpected = sorted(str(k) for k in node if k not in _HOST_KEYS)
    if unexpected:
        raise ValueError(f"{_join(path)}: unexpected keys {unexpected} in a Dense layer")
    kernel, host_bias = _layer(node, path)
    d_in, d_out = kernel.shape
    width = hrf_width(d_in, d_out, ratio, base)
    if width < d_in:
        raise ValueError(
            f"{_join(path)}: HRF width {width} < input width {d_in}; an exact factorization "
            "of a full-rank kernel needs r >= d (raise the ratio or use base='in')"
        )
    keys = jax.random.split(key, depth)
    factors = []
    for i in range(depth):
        rows = d_in if i == 0 else width
        # QR of a (width, rows) Gaussian: columns orthonormal, so its transpose has
        # orthonormal rows and Q^T @ Q == I on the input side.
        q, _ = jnp.linalg.qr(jax.random.normal(keys[i], (width, rows), jnp.float32))
        factors.append(q.T)
    with jax.default_matmul_precision("highest"):
        new_kernel = jnp.asarray(kernel, jnp.float32)
        for q in factors:
            new_kernel = q.T @ new_kernel
    on_host = not _use_jax(kernel, host_bias)
    cast = (lambda a, dt: np.asarray(a).astype(dt)) if on_host else jnp.asarray
    out: dict[str, Any] = {}
    for i, q in enumerate(factors):
        layer = {"kernel": cast(q, kernel.dtype)}
        if bias and host_bias is not None:
            layer["bias"] = cast(np.zeros((width,), np.float32), host_bias.dtype)
        out[f"{HRF_PREFIX}{i}"] = layer
    out["kernel"] = cast(new_kernel, kernel.dtype)
    if host_bias is not None:
        out["bias"] = host_bias
    return _like(node, out)


# --------------------------------------------------------------------------- batchnorm


def fold_batchnorm(variables: Tree, *, eps: float | None = None) -> Tree:
    """Folds every eval-mode BatchNorm into the depthwise conv before it.

    A module dict holding ``depthwise`` ({kernel (K, 1, C), bias (C,)}) and ``batch_norm``
    ({scale, bias}, running ``mean``/``var`` under ``batch_stats`` at the same path) becomes
    ``depthwise`` alone with ``kernel * s`` and ``(bias - mean) * s + beta``,
    ``s = scale / sqrt(var + eps)``. The result loads into the same model built with
    ``fold_bn=True``; emptied ``batch_stats`` are dropped. Pure; already folded trees come
    back equal. ``eps`` defaults to ``layers.BN_EPSILON`` (the models' BatchNorm epsilon).
    """
    from hrf_jax.layers import BN_EPSILON

    eps = BN_EPSILON if eps is None else eps
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError("fold_batchnorm expects a variables dict with a 'params' collection")
    stats = variables.get("batch_stats", {})
    folded: list[tuple[str, ...]] = []

    def visit(node: Any, path: tuple[str, ...]) -> Any:
        if not isinstance(node, Mapping):
            _check_leaf(node, ("params", *path))
            return node
        if "batch_norm" in node:
            if "depthwise" not in node:
                raise ValueError(
                    f"params/{_join((*path, 'batch_norm'))} has no 'depthwise' conv beside it "
                    f"to fold into (keys: {sorted(node)})"
                )
            folded.append(path)
            bn_stats = _stats_at(stats, (*path, "batch_norm"))
            items = {
                k: visit(v, (*path, str(k)))
                for k, v in node.items()
                if k not in ("batch_norm", "depthwise")
            }
            items["depthwise"] = _fold_bn_into_conv(
                node["depthwise"], node["batch_norm"], bn_stats, path, eps
            )
            return _like(node, items)
        return _like(node, {k: visit(v, (*path, str(k))) for k, v in node.items()})

    params = visit(variables["params"], ())
    out = {k: v for k, v in variables.items() if k not in ("params", "batch_stats")}
    out["params"] = params
    if "batch_stats" in variables:
        remaining = _drop_paths(stats, [(*p, "batch_norm") for p in folded])
        if remaining:
            out["batch_stats"] = remaining
    return _like(variables, out)


def _stats_at(stats: Any, path: tuple[str, ...]) -> tuple[Any, Any]:
    node = stats
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(
                f"batch_stats/{_join(path)} is missing (stopped at "
                f"batch_stats/{_join(path[: i + 1])}); fold needs the running mean and var"
            )
        node = node[key]
    for key in ("mean", "var"):
        if key not in node:
            raise ValueError(f"batch_stats/{_join(path)} has no '{key}' (keys: {sorted(node)})")
        _check_leaf(node[key], ("batch_stats", *path, key))
    return node["mean"], node["var"]


def _fold_bn_into_conv(
    conv: Any, bn: Any, stats: tuple[Any, Any], path: tuple[str, ...], eps: float
) -> Mapping:
    where = f"params/{_join((*path, 'depthwise'))}"
    if not isinstance(conv, Mapping) or "kernel" not in conv:
        raise ValueError(f"{where} should be a dict with 'kernel'")
    if not isinstance(bn, Mapping) or not {"scale", "bias"} <= set(bn):
        raise ValueError(f"params/{_join((*path, 'batch_norm'))} needs 'scale' and 'bias'")
    kernel = conv["kernel"]
    _check_leaf(kernel, (*path, "depthwise", "kernel"))
    mean, var = stats
    c = kernel.shape[-1]
    for name, arr in (("scale", bn["scale"]), ("bias", bn["bias"]), ("mean", mean), ("var", var)):
        if tuple(arr.shape) != (c,):
            raise ValueError(
                f"{_join((*path, 'batch_norm', name))} has shape {tuple(arr.shape)}, expected "
                f"({c},) to match {where}/kernel {tuple(kernel.shape)}"
            )
    conv_bias = conv.get("bias")
    xp, dtype = (jnp, jnp.float32) if _use_jax(kernel, conv_bias, mean, var) else (np, np.float64)
    s = xp.asarray(bn["scale"], dtype) / xp.sqrt(xp.asarray(var, dtype) + eps)
    b = xp.zeros((c,), dtype) if conv_bias is None else xp.asarray(conv_bias, dtype)
    new_bias = (b - xp.asarray(mean, dtype)) * s + xp.asarray(bn["bias"], dtype)
    bias_dtype = kernel.dtype if conv_bias is None else conv_bias.dtype
    out = {
        "kernel": (xp.asarray(kernel, dtype) * s).astype(kernel.dtype),
        "bias": new_bias.astype(bias_dtype),
    }
    return _like(conv, out)


def _drop_paths(tree: Mapping, paths: list[tuple[str, ...]]) -> dict:
    """A copy of ``tree`` without ``paths``; dicts left empty are removed too."""
    drop = set(paths)

    def visit(node: Any, path: tuple[str, ...]) -> Any:
        if not isinstance(node, Mapping):
            return node
        items = {}
        for k, v in node.items():
            sub = (*path, str(k))
            if sub in drop:
                continue
            v = visit(v, sub)
            if isinstance(v, Mapping) and not v:
                continue
            items[k] = v
        return _like(node, items)

    return visit(tree, ())
