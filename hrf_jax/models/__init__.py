"""SER backbones and their named sizes, one module per backbone, named after it.

``build_model("conformer", "light", num_classes=4, hrf_ratio=4)`` returns a Linen module
called as ``model.apply(variables, feats (B, T, F), mask (B, T), train=False) -> (B, C)``.
The names below need no JAX (the CLI lists them in ``--help``); the functions come from
``hrf_jax.models.registry`` on first use.
"""

from __future__ import annotations

from hrf_jax.lazy import lazy_exports

BACKBONES = ("conformer", "speechformer", "convtransformer")
SIZES = ("light", "large")

_REGISTRY = ("build_model", "get_config", "list_configs", "supported_targets")

__all__ = ["BACKBONES", "SIZES", *_REGISTRY]


__getattr__, __dir__ = lazy_exports(globals(), dict.fromkeys(_REGISTRY, "hrf_jax.models.registry"))
