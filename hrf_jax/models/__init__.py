"""Registry of SER backbones and their named sizes.

``build_model("conformer", "light", num_classes=4, hrf_ratio=4)`` returns a Linen module
called as ``model.apply(variables, feats (B, T, F), mask (B, T), train=False) -> (B, C)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn

from hrf_jax.layers import HRFSpec
from hrf_jax.models import conformer, convtransformer, speechformer

_BACKBONES: dict[str, Any] = {
    "conformer": (conformer.Conformer, conformer.CONFIGS, conformer.TARGETS),
    "speechformer": (speechformer.SpeechFormer, speechformer.CONFIGS, speechformer.TARGETS),
    "convtransformer": (
        convtransformer.ConvTransformer,
        convtransformer.CONFIGS,
        convtransformer.TARGETS,
    ),
}
# build_model keyword -> HRFSpec field
_HRF_OVERRIDES = {"hrf_depth": "depth", "hrf_bias": "bias", "hrf_init": "init", "hrf_base": "base"}


def _entry(backbone: str) -> tuple[Any, dict[str, Any], tuple[str, ...]]:
    if backbone not in _BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(_BACKBONES)}")
    return _BACKBONES[backbone]


def list_configs() -> list[tuple[str, str]]:
    """Every registered ``(backbone, size)`` pair."""
    return [(b, s) for b, (_, configs, _) in _BACKBONES.items() for s in configs]


def supported_targets(backbone: str) -> tuple[str, ...]:
    """HRF target names that exist in ``backbone``."""
    return _entry(backbone)[2]


def get_config(backbone: str, size: str = "light", **overrides: Any) -> Any:
    """The frozen config dataclass of ``backbone``/``size`` with ``overrides`` replaced."""
    _, configs, _ = _entry(backbone)
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
    return dataclasses.replace(cfg, **overrides)


def build_model(
    backbone: str,
    size: str = "light",
    *,
    num_classes: int,
    hrf_ratio: float = 0,
    hrf_targets: Sequence[str] = ("ffn",),
    **overrides: Any,
) -> nn.Module:
    """A ``backbone`` classifier of ``size``; ``hrf_ratio=0`` is the plain (deployable) model.

    ``overrides``: ``hrf_depth``, ``hrf_bias``, ``hrf_init``, ``hrf_base`` (see ``HRFDense``)
    and any field of the backbone's config dataclass (``dropout``, ``input_dim_proj`` ...).
    """
    model_cls, _, targets = _entry(backbone)
    targets_t = (hrf_targets,) if isinstance(hrf_targets, str) else tuple(hrf_targets)
    hrf_kwargs = {
        field: overrides.pop(key) for key, field in _HRF_OVERRIDES.items() if key in overrides
    }
    spec = HRFSpec(ratio=hrf_ratio, targets=targets_t, **hrf_kwargs)
    missing = sorted(set(targets_t) - set(targets))
    if missing:
        raise ValueError(f"hrf_targets {missing} do not exist in {backbone}; it has {targets}")
    cfg = get_config(backbone, size, **overrides)
    return model_cls(cfg, num_classes, spec)


__all__ = ["build_model", "get_config", "list_configs", "supported_targets"]
