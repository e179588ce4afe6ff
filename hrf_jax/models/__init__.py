"""SER backbones and their named sizes, one module per backbone, named after it.

``build_model("conformer", "light", num_classes=4, hrf_ratio=4)`` returns a Linen module
called as ``model.apply(variables, feats (B, T, F), mask (B, T), train=False) -> (B, C)``.
The names below need no JAX (the CLI lists them in ``--help``); the functions come from
``hrf_jax.models.registry`` on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

BACKBONES = ("conformer", "speechformer", "convtransformer")
SIZES = ("light", "large")

_REGISTRY = ("build_model", "get_config", "list_configs", "supported_targets")

__all__ = ["BACKBONES", "SIZES", *_REGISTRY]


def __getattr__(name: str) -> Any:
    if name not in _REGISTRY:
        raise AttributeError(f"module 'hrf_jax.models' has no attribute {name!r}")
    value = getattr(importlib.import_module("hrf_jax.models.registry"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_REGISTRY])
