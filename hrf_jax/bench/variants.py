"""The benchmarked configs: a backbone from ``hrf_jax.models.BACKBONES`` times a variant."""

from __future__ import annotations

from typing import Any

# variant -> (size, hrf_ratio, merged, extra build_model overrides)
VARIANTS: dict[str, tuple[str, int, bool, dict[str, Any]]] = {
    "light": ("light", 0, False, {}),
    "light_hrf4": ("light", 4, False, {}),
    "light_merged": ("light", 4, True, {}),
    "large": ("large", 0, False, {}),
    # SpeechFormer-S: expand (1,1,1) on the 128-dim features (the official comparison point)
    "S": ("light", 0, False, {"input_dim_proj": None}),
}
FEAT_DIM, NUM_CLASSES = 128, 4


def build_variant(backbone: str, variant: str) -> Any:
    """The Linen module of ``backbone``/``variant``; a merged variant builds its HRF model."""
    from hrf_jax.models import build_model

    size, ratio, _, extra = VARIANTS[variant]
    return build_model(backbone, size, num_classes=NUM_CLASSES, hrf_ratio=ratio, **extra)


def is_merged(variant: str) -> bool:
    """Whether ``variant`` is measured as its merged tree on the plain light model."""
    return VARIANTS[variant][2]
