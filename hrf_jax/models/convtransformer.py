"""ConvTransformer (ESPnet-ST / fairseq ``convtransformer``) for utterance-level SER.

Two 3x3 stride-2 Conv2d + ReLU -> linear projection to d -> ``x * sqrt(d)`` + sinusoidal PE
-> post-LN Transformer encoder layers (pre-LN option, with a final LayerNorm as in fairseq)
-> masked mean pooling -> linear classifier.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrf_jax.attention import sinusoidal_encoding
from hrf_jax.hrf import HRFSpec
from hrf_jax.layers import Dropout, EncoderLayer
from hrf_jax.masking import masked_mean
from hrf_jax.subsampling import ConvSubsampling

Array = jax.Array

TARGETS = ("ffn", "ffn2", "attn_in", "attn_out", "head")


@dataclasses.dataclass(frozen=True)
class ConvTransformerConfig:
    """Sizes of a ConvTransformer; ``large`` follows fairseq ``convtransformer_espnet``."""

    d_model: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    subsampling_channels: int | None = None  # None: d_model (fairseq conv_out_channels)
    dropout: float = 0.1
    pre_ln: bool = False


CONFIGS = {
    "light": ConvTransformerConfig(d_model=64, num_layers=4, num_heads=4, ffn_dim=512,
                                   subsampling_channels=32),
    "large": ConvTransformerConfig(d_model=256, num_layers=12, num_heads=4, ffn_dim=2048),
}

# config fields of the reference implementation: build_model(..., reference=True)
REFERENCE: dict[str, object] = {}


class ConvTransformer(nn.Module):
    """``feats (B, T, F), mask (B, T) -> logits (B, num_classes)``."""

    cfg: ConvTransformerConfig
    num_classes: int
    hrf: HRFSpec = HRFSpec()

    @nn.compact
    def __call__(self, feats: Array, mask: Array, *, train: bool = False) -> Array:
        cfg = self.cfg
        channels = cfg.subsampling_channels or cfg.d_model
        subsample = ConvSubsampling(channels, cfg.d_model, name="subsampling")
        x, mask = subsample(feats, mask, train=train)
        x = x * jnp.sqrt(float(cfg.d_model)) + sinusoidal_encoding(
            jnp.arange(x.shape[1]), cfg.d_model
        )
        x = Dropout(cfg.dropout, deterministic=not train)(x)
        for i in range(cfg.num_layers):
            x = EncoderLayer(
                cfg.num_heads, cfg.ffn_dim, self.hrf, cfg.dropout, cfg.pre_ln, name=f"layer_{i}"
            )(x, mask, train=train)
        if cfg.pre_ln:
            x = nn.LayerNorm(name="ln_out")(x)
        return self.hrf.dense(self.num_classes, "head", "classifier")(masked_mean(x, mask))


MODEL = ConvTransformer  # the registry builds this class with (config, num_classes, HRFSpec)
