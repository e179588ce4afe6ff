"""Backbone registry: each name in ``hrf_jax.models.BACKBONES`` is a module that defines
``MODEL`` (a Linen class built as ``MODEL(config, num_classes, HRFSpec)``), ``CONFIGS``
(size -> frozen config dataclass, the sizes ``hrf_jax.models.SIZES``), ``TARGETS`` (the HRF
target names that exist in it) and ``REFERENCE`` (the config fields that make any size
function-identical to the backbone's reference implementation, ``reference=True``).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import flax.linen as nn

from hrf_jax.hrf import HRFSpec
from hrf_jax.models import BACKBONES

_MODULES: dict[str, ModuleType] = {
    name: importlib.import_module(f"hrf_jax.models.{name}") for name in BACKBONES
}

# build_model keyword -> HRFSpec field
_HRF_OVERRIDES = {"hrf_depth": "depth", "hrf_bias": "bias", "hrf_init": "init", "hrf_base": "base",
                  "hrf_norm": "norm"}


def _module(backbone: str) -> ModuleType:
    if backbone not in _MODULES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(_MODULES)}")
    return _MODULES[backbone]


def list_configs() -> list[tuple[str, str]]:
    """Every registered ``(backbone, size)`` pair."""
    return [(b, s) for b, module in _MODULES.items() for s in module.CONFIGS]


def supported_targets(backbone: str) -> tuple[str, ...]:
    """HRF target names that exist in ``backbone``."""
    return _module(backbone).TARGETS


def get_config(backbone: str, size: str = "light", *, reference: bool = False,
               **overrides: Any) -> Any:
    """The frozen config dataclass of ``backbone``/``size`` with ``overrides`` replaced;
    ``reference=True`` first applies the backbone's ``REFERENCE`` fields."""
    configs = _module(backbone).CONFIGS
    if size not in configs:
        raise ValueError(f"unknown size {size!r} for {backbone}; choose from {sorted(configs)}")
    cfg = configs[size]
    fields = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"unknown override(s) {unknown} for {backbone}; config fields are {sorted(fields)}, "
            f"HRF options are {sorted(_HRF_OVERRIDES)}"
        )
    if reference:
        cfg = dataclasses.replace(cfg, **_module(backbone).REFERENCE)
    return dataclasses.replace(cfg, **overrides)


def build_model(
    backbone: str,
    size: str = "light",
    *,
    num_classes: int,
    hrf_ratio: float = 0,
    hrf_targets: Sequence[str] = ("ffn",),
    reference: bool = False,
    **overrides: Any,
) -> nn.Module:
    """A ``backbone`` classifier of ``size``; ``hrf_ratio=0`` is the plain (deployable) model.

    ``reference=True``: the reference implementation's behaviour (see the backbone's
    ``REFERENCE`` and the README's faithfulness table) instead of this project's defaults.

    ``overrides``: ``hrf_depth``, ``hrf_bias``, ``hrf_init``, ``hrf_base`` (see ``HRFDense``)
    and any field of the backbone's config dataclass (``dropout``, ``input_dim_proj`` ...).
    """
    module = _module(backbone)
    targets = (hrf_targets,) if isinstance(hrf_targets, str) else tuple(hrf_targets)
    hrf_kwargs = {
        field: overrides.pop(key) for key, field in _HRF_OVERRIDES.items() if key in overrides
    }
    spec = HRFSpec(ratio=hrf_ratio, targets=targets, **hrf_kwargs)
    missing = sorted(set(targets) - set(module.TARGETS))
    if missing:
        raise ValueError(
            f"hrf_targets {missing} do not exist in {backbone}; it has {module.TARGETS}"
        )
    cfg = get_config(backbone, size, reference=reference, **overrides)
    return module.MODEL(cfg, num_classes, spec)
