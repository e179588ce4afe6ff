"""Workarounds for jax2onnx bugs that our graphs hit, active only while jax2onnx converts.

Each workaround is a context manager that patches on entry and restores in ``finally``, and
``fixed_in``, the first jax2onnx release that no longer needs it (``None`` while every release
so far does). Found on jax2onnx 0.17.1 (setup.cfg allows ``>=0.8,<0.18``); each patch computes
the same values as what it replaces, so applying it to a release that has no bug is harmless.
``tests/test_export.py`` converts a minimal failing function without each workaround the
installed release needs, and fails once that release no longer needs it.

The patches are process-wide while they are active: do not convert in several threads at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp


@contextlib.contextmanager
def _typed_where() -> Iterator[None]:
    """``jnp.where(mask, x, 0)`` of a float32 ``x`` gives float64 under jax2onnx (the Python
    scalar loses its weak type), which reaches concatenations and convolutions as mixed
    float32/float64 (an ONNX file that fails type checking, or ``TypeError`` in
    ``lax.conv_general_dilated``): both branches are cast to JAX's own result type first."""
    where = jnp.where

    def typed_where(condition, x=None, y=None, **kwargs):
        if x is not None and y is not None:
            dtype = jnp.result_type(x, y)
            x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
        return where(condition, x, y, **kwargs)

    jnp.where = typed_where
    try:
        yield
    finally:
        jnp.where = where


@contextlib.contextmanager
def _iota_arange() -> Iterator[None]:
    """``jnp.arange`` over a symbolic length gets a data-dependent size under jax2onnx that the
    next operation cannot handle (``AttributeError: '_DynamicDimSentinel' object has no
    attribute 'rmax'``; the positional encodings call ``jnp.arange(T)`` and
    ``jnp.arange(T - 1, -T, -1)``): it becomes an iota, which keeps the symbolic size."""
    arange = jnp.arange

    def iota_arange(start, stop=None, step=None, dtype=None, **kwargs):
        if not any(jax.export.is_symbolic_dim(v) for v in (start, stop, step)):
            return arange(*[v for v in (start, stop, step) if v is not None], dtype=dtype,
                          **kwargs)
        start, stop = (0, start) if stop is None else (start, stop)
        step = 1 if step is None else step
        if step not in (1, -1):
            raise ValueError(f"symbolic jnp.arange with step {step} is not supported")
        return start + step * jax.lax.iota(dtype or jnp.int32, (stop - start) * step)

    jnp.arange = iota_arange
    try:
        yield
    finally:
        jnp.arange = arange


@contextlib.contextmanager
def _shared_symbolic_scopes() -> Iterator[None]:
    """jax2onnx deep-copies gather instructions, symbolic dimensions included, and jax's
    ``SymbolicScope`` cannot be deep-copied once its bounds cache holds two expressions of
    equal hash, such as ``T - 1`` and ``T - 2`` (``hash(-1) == hash(-2)`` in CPython):
    ``AttributeError: 'SymbolicScope' object has no attribute '_normalization_rules'``; the
    Conformer's relative-position gather hits it. A scope never changes what it means after
    it is built, so a copy may be the scope itself."""
    from jax._src.export import shape_poly

    scope = shape_poly.SymbolicScope
    had = "__deepcopy__" in vars(scope)
    old = vars(scope).get("__deepcopy__")
    scope.__deepcopy__ = lambda self, memo: self
    try:
        yield
    finally:
        if had:
            scope.__deepcopy__ = old
        else:
            del scope.__deepcopy__


@dataclasses.dataclass(frozen=True)
class Workaround:
    """One patch: ``during="trace"`` is entered inside the traced function, because jax2onnx
    swaps ``jax.numpy`` functions for its own while it traces; ``"conversion"`` around it all."""

    name: str
    patch: Callable[[], contextlib.AbstractContextManager[None]]
    during: Literal["trace", "conversion"]
    fixed_in: tuple[int, ...] | None = None

    def needed(self, version: tuple[int, ...]) -> bool:
        return self.fixed_in is None or version < self.fixed_in


WORKAROUNDS = (
    Workaround("typed_where", _typed_where, "trace"),
    Workaround("iota_arange", _iota_arange, "trace"),
    Workaround("shared_symbolic_scopes", _shared_symbolic_scopes, "conversion"),
)


def jax2onnx_version() -> tuple[int, ...]:
    """The installed jax2onnx release as numbers, e.g. ``(0, 17, 1)``."""
    text = importlib.metadata.version("jax2onnx")
    return tuple(int(p) for p in re.match(r"\d+(\.\d+)*", text).group(0).split("."))


def needed_workarounds() -> tuple[Workaround, ...]:
    """The workarounds the installed jax2onnx needs."""
    version = jax2onnx_version()
    return tuple(w for w in WORKAROUNDS if w.needed(version))


def to_onnx(fn: Callable, inputs: Sequence[Any], *,
            workarounds: Sequence[Workaround] | None = None, **kwargs: Any) -> Any:
    """``jax2onnx.to_onnx(fn, inputs, **kwargs)`` (an ``onnx.ModelProto``) with
    ``workarounds`` (default: those the installed jax2onnx needs) active while it converts."""
    from jax2onnx import to_onnx as convert

    chosen = needed_workarounds() if workarounds is None else tuple(workarounds)

    @functools.wraps(fn)
    def traced(*args):
        with contextlib.ExitStack() as stack:
            for w in chosen:
                if w.during == "trace":
                    stack.enter_context(w.patch())
            return fn(*args)

    with contextlib.ExitStack() as stack:
        for w in chosen:
            if w.during == "conversion":
                stack.enter_context(w.patch())
        return convert(traced, list(inputs), **kwargs)
