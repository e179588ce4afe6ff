"""Variable trees: the one walk every re-parameterization uses, and where its math runs.

A variable tree is nested mappings (``dict`` or flax ``FrozenDict``) of numpy or jax arrays.
``map_modules`` copies its containers and lets a function replace any sub-mapping; leaves are
shared, never copied or mutated. Paths are tuples of keys, '/'-joined in every message.
Host numpy trees are folded on the host in float64, so a checkpoint merges exactly without
a device; jax arrays stay jax (float32, highest precision), so the folds also run under jit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Path = tuple[str, ...]


def join(path: Path) -> str:
    """``("params", "fc1")`` -> ``"params/fc1"``; the empty path reads ``<root>``."""
    return "/".join(path) if path else "<root>"


def key_path(path: tuple[Any, ...]) -> Path:
    """A ``jax.tree_util`` key path (``DictKey`` ...) as a tuple of ``str`` keys."""
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def check_leaf(leaf: Any, path: Path) -> None:
    """Raises unless ``leaf`` is a numpy or jax array (or a ``jax.ShapeDtypeStruct``)."""
    if not isinstance(leaf, np.ndarray | np.generic | jax.Array | jax.ShapeDtypeStruct):
        raise ValueError(
            f"non-array leaf at {join(path)}: {type(leaf).__name__} "
            "(variable trees must hold numpy or jax arrays)"
        )


def array_backend(*arrays: Any) -> tuple[Any, Any, Callable[[Any, Any], Any]]:
    """``(xp, dtype, matmul)`` for math on leaves: numpy and float64 when every array is on the
    host, else ``jax.numpy`` and float32 at highest precision (jax arrays, tracers under jit)."""
    if any(isinstance(a, jax.Array) for a in arrays if a is not None):
        return jnp, jnp.float32, functools.partial(jnp.matmul, precision="highest")
    return np, np.float64, np.matmul


def like(template: Mapping, items: dict) -> Mapping:
    """A new mapping of ``template``'s type (dict or FrozenDict) holding ``items``."""
    return items if type(template) is dict else type(template)(items)


def map_modules(
    tree: Any, fn: Callable[[Path, Mapping], Mapping | None], path: Path = ()
) -> Any:
    """A copy of ``tree`` in which ``fn(path, node)`` may replace any sub-mapping.

    ``fn`` sees every mapping, outermost first, and returns its replacement (not walked
    further) or ``None`` to keep the node and walk into its children. Every leaf reached is
    checked to be an array; ``path`` is the tree's own place (for messages).
    """
    if not isinstance(tree, Mapping):
        check_leaf(tree, path)
        return tree
    replaced = fn(path, tree)
    if replaced is not None:
        return replaced
    return like(tree, {k: map_modules(v, fn, (*path, str(k))) for k, v in tree.items()})


def drop_paths(tree: Mapping, paths: set[Path]) -> Mapping:
    """A copy of ``tree`` without the sub-trees at ``paths``; mappings left empty go too."""

    def walk(path: Path, node: Mapping) -> Mapping:
        kept = {}
        for k, v in node.items():
            here = (*path, str(k))
            if here in paths:
                continue
            v = walk(here, v) if isinstance(v, Mapping) else v
            if not (isinstance(v, Mapping) and not v):
                kept[k] = v
        return like(node, kept)

    return walk((), tree)
