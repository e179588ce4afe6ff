"""BatchNorm folding: an eval-mode BatchNorm after a depthwise conv becomes part of the conv.

``fold_bn_into_conv`` is the algebra; ``fold_batchnorm`` walks a variable tree with
``trees.map_modules`` and applies it wherever a ``batch_norm`` sits beside a ``depthwise``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hrf_jax.masking import BN_EPSILON
from hrf_jax.trees import Path, array_backend, check_leaf, join, like, map_modules


def fold_bn_into_conv(
    kernel: Any, bias: Any | None, scale: Any, beta: Any, mean: Any, var: Any, eps: float
) -> tuple[Any, Any]:
    """Conv ``kernel (..., C)``, ``bias (C,)`` (None: zero) then eval BatchNorm, as one conv.

    ``(kernel * s, (bias - mean) * s + beta)`` with ``s = scale / sqrt(var + eps)``.
    """
    xp, dtype, _ = array_backend(kernel, bias, scale, beta, mean, var)
    s = xp.asarray(scale, dtype) / xp.sqrt(xp.asarray(var, dtype) + eps)
    b = xp.zeros(kernel.shape[-1], dtype) if bias is None else xp.asarray(bias, dtype)
    new_bias = (b - xp.asarray(mean, dtype)) * s + xp.asarray(beta, dtype)
    return xp.asarray(kernel, dtype) * s, new_bias


def fold_batchnorm(variables: Mapping[str, Any], *, eps: float | None = None) -> Mapping[str, Any]:
    """Folds every eval-mode BatchNorm into the depthwise conv before it.

    A module dict holding ``depthwise`` ({kernel (K, 1, C), bias (C,)}) and ``batch_norm``
    ({scale, bias}, running ``mean``/``var`` under ``batch_stats`` at the same path) becomes
    ``depthwise`` alone with ``fold_bn_into_conv``'s kernel and bias. The result loads into the
    same model built with ``fold_bn=True``; emptied ``batch_stats`` are dropped. Pure; already
    folded trees come back equal. ``eps`` defaults to ``BN_EPSILON`` (the models' BatchNorm).
    """
    eps = BN_EPSILON if eps is None else eps
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError("fold_batchnorm expects a variables dict with a 'params' collection")
    folded: set[Path] = set()  # module paths under params, without the collection name

    def fold(path: Path, node: Mapping) -> Mapping | None:
        if "batch_norm" not in node:
            return None
        if "depthwise" not in node:
            raise ValueError(f"{join((*path, 'batch_norm'))} has no 'depthwise' conv beside it "
                             f"to fold into (keys: {sorted(node)})")
        folded.add(path[1:])
        items = {k: map_modules(v, fold, (*path, str(k)))
                 for k, v in node.items() if k not in ("batch_norm", "depthwise")}
        items["depthwise"] = _fold_module(variables, path, node, eps)
        return like(node, items)

    def drop_folded(path: Path, node: Mapping) -> Mapping:
        # the statistics of the folded BatchNorms go, and every dict they leave empty
        kept = {}
        for k, v in node.items():
            if k == "batch_norm" and path[1:] in folded:
                continue
            v = map_modules(v, drop_folded, (*path, str(k)))
            if not (isinstance(v, Mapping) and not v):
                kept[k] = v
        return like(node, kept)

    out = {k: v for k, v in variables.items() if k not in ("params", "batch_stats")}
    out["params"] = map_modules(variables["params"], fold, ("params",))
    stats = map_modules(variables.get("batch_stats", {}), drop_folded, ("batch_stats",))
    if stats:
        out["batch_stats"] = stats
    return like(variables, out)


def _fold_module(variables: Mapping, path: Path, node: Mapping, eps: float) -> Mapping:
    """The folded ``depthwise`` dict of the module at ``path`` (``params/...``), validated."""
    conv, bn = node["depthwise"], node["batch_norm"]
    where = join((*path, "depthwise"))
    if not isinstance(conv, Mapping) or "kernel" not in conv:
        raise ValueError(f"{where} should be a dict with 'kernel'")
    if not isinstance(bn, Mapping) or not {"scale", "bias"} <= set(bn):
        raise ValueError(f"{join((*path, 'batch_norm'))} needs 'scale' and 'bias'")
    kernel, bias = conv["kernel"], conv.get("bias")
    stats_path = ("batch_stats", *path[1:], "batch_norm")
    mean, var = _stats_at(variables, stats_path)
    check_leaf(kernel, (*path, "depthwise", "kernel"))
    if bias is not None:
        check_leaf(bias, (*path, "depthwise", "bias"))
    c = kernel.shape[-1]
    bn_path = (*path, "batch_norm")
    for where_arr, arr in (((*bn_path, "scale"), bn["scale"]), ((*bn_path, "bias"), bn["bias"]),
                           ((*stats_path, "mean"), mean), ((*stats_path, "var"), var)):
        check_leaf(arr, where_arr)
        if tuple(arr.shape) != (c,):
            raise ValueError(f"{join(where_arr)} has shape {tuple(arr.shape)}, expected ({c},) "
                             f"to match {where}/kernel {tuple(kernel.shape)}")
    new_kernel, new_bias = fold_bn_into_conv(kernel, bias, bn["scale"], bn["bias"], mean, var, eps)
    bias_dtype = kernel.dtype if bias is None else bias.dtype
    return like(conv, {"kernel": new_kernel.astype(kernel.dtype),
                       "bias": new_bias.astype(bias_dtype)})


def _stats_at(variables: Mapping, path: Path) -> tuple[Any, Any]:
    """Running ``(mean, var)`` at ``path`` (``batch_stats/...``), named when missing."""
    node: Any = variables
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(f"{join(path)} is missing (stopped at {join(path[: i + 1])}); "
                             "fold needs the running mean and var")
        node = node[key]
    for key in ("mean", "var"):
        if key not in node:
            raise ValueError(f"{join(path)} has no '{key}' (keys: {sorted(node)})")
    return node["mean"], node["var"]
