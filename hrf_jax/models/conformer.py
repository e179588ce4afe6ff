"""Conformer (Gulati et al., Interspeech 2020) for utterance-level SER.

Conv subsampling x4 -> blocks of [1/2 FFN, MHSA (relative sinusoidal positions, Transformer-XL
u/v biases; absolute as an option), convolution module, 1/2 FFN, LayerNorm] -> masked mean
pooling -> linear classifier. Pre-LN everywhere, so each HRF layer sits after a LayerNorm.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrf_jax.attention import MultiHeadAttention, RelPositionAttention, sinusoidal_encoding
from hrf_jax.hrf import HRFSpec
from hrf_jax.layers import Dropout, FeedForward
from hrf_jax.masking import MaskedBatchNorm, masked_mean, zero_padding
from hrf_jax.subsampling import ConvSubsampling

Array = jax.Array

TARGETS = ("ffn", "ffn2", "attn_in", "attn_out", "conv_pointwise", "head")


@dataclasses.dataclass(frozen=True)
class ConformerConfig:
    """Sizes of a Conformer encoder; ``large`` is Conformer-S (d=144, 16 layers, 4 heads)."""

    d_model: int
    num_layers: int
    num_heads: int
    ffn_expansion: int = 4
    kernel_size: int = 31
    subsampling_channels: int | None = None  # None: d_model (ESPnet)
    dropout: float = 0.1
    pos_enc: str = "rel"  # "rel" (Transformer-XL) or "abs" (x*sqrt(d) + sinusoid)
    fold_bn: bool = False  # True: depthwise conv with the BatchNorm folded in, no BatchNorm

    @property
    def ffn_dim(self) -> int:
        return self.ffn_expansion * self.d_model


CONFIGS = {
    "light": ConformerConfig(d_model=48, num_layers=6, num_heads=4),
    "large": ConformerConfig(d_model=144, num_layers=16, num_heads=4),
}

# config fields of the reference implementation: build_model(..., reference=True)
REFERENCE: dict[str, object] = {}


class ConvModule(nn.Module):
    """LN -> pointwise (d -> 2d) -> GLU -> depthwise conv -> BatchNorm -> Swish -> pointwise.

    Pointwise convs are ``HRFDense`` on ``(B, T, C)`` (target ``conv_pointwise``). Padded frames
    are zeroed before the depthwise conv, so they never reach real frames.
    """

    kernel_size: int
    hrf: HRFSpec
    dropout: float
    fold_bn: bool

    @nn.compact
    def __call__(self, x: Array, mask: Array, *, train: bool = False) -> Array:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"conformer kernel_size must be odd, got {self.kernel_size}")
        d = x.shape[-1]
        h = nn.LayerNorm(name="ln")(x)
        h = nn.glu(self.hrf.dense(2 * d, "conv_pointwise", "pointwise_1")(h), axis=-1)
        h = nn.Conv(
            d, (self.kernel_size,), padding="SAME", feature_group_count=d, name="depthwise"
        )(zero_padding(h, mask))
        if not self.fold_bn:
            h = MaskedBatchNorm(name="batch_norm")(h, mask, train=train)
        h = self.hrf.dense(d, "conv_pointwise", "pointwise_2")(nn.swish(h))
        return Dropout(self.dropout, deterministic=not train)(h)


class ConformerBlock(nn.Module):
    """Macaron block: ``x + 1/2 FFN``, ``+ MHSA``, ``+ conv``, ``+ 1/2 FFN``, then LayerNorm."""

    cfg: ConformerConfig
    hrf: HRFSpec

    @nn.compact
    def __call__(self, x: Array, mask: Array, *, train: bool = False) -> Array:
        cfg = self.cfg
        drop = Dropout(cfg.dropout, deterministic=not train)
        h = FeedForward(cfg.ffn_dim, nn.swish, cfg.dropout, self.hrf, name="ffn1")(
            nn.LayerNorm(name="ln_ffn1")(x), train=train
        )
        x = x + 0.5 * drop(h)
        h = nn.LayerNorm(name="ln_attn")(x)
        if cfg.pos_enc == "rel":
            h = RelPositionAttention(cfg.num_heads, self.hrf, name="attn")(h, mask)
        else:
            h = MultiHeadAttention(cfg.num_heads, self.hrf, name="attn")(h, mask)
        x = x + drop(h)
        x = x + ConvModule(cfg.kernel_size, self.hrf, cfg.dropout, cfg.fold_bn, name="conv")(
            x, mask, train=train
        )
        h = FeedForward(cfg.ffn_dim, nn.swish, cfg.dropout, self.hrf, name="ffn2")(
            nn.LayerNorm(name="ln_ffn2")(x), train=train
        )
        x = x + 0.5 * drop(h)
        return nn.LayerNorm(name="ln_out")(x)


class Conformer(nn.Module):
    """Conformer classifier: ``feats (B, T, F), mask (B, T) -> logits (B, num_classes)``."""

    cfg: ConformerConfig
    num_classes: int
    hrf: HRFSpec = HRFSpec()

    @nn.compact
    def __call__(self, feats: Array, mask: Array, *, train: bool = False) -> Array:
        cfg = self.cfg
        if cfg.pos_enc not in ("rel", "abs"):
            raise ValueError(f"pos_enc must be 'rel' or 'abs', got {cfg.pos_enc!r}")
        channels = cfg.subsampling_channels or cfg.d_model
        subsample = ConvSubsampling(channels, cfg.d_model, name="subsampling")
        x, mask = subsample(feats, mask, train=train)
        # ESPnet scales the embedding by sqrt(d) for both positional-encoding types
        x = x * jnp.sqrt(float(cfg.d_model))
        if cfg.pos_enc == "abs":
            x = x + sinusoidal_encoding(jnp.arange(x.shape[1]), cfg.d_model)
        x = Dropout(cfg.dropout, deterministic=not train)(x)
        for i in range(cfg.num_layers):
            x = ConformerBlock(cfg, self.hrf, name=f"block_{i}")(x, mask, train=train)
        return self.hrf.dense(self.num_classes, "head", "classifier")(masked_mean(x, mask))


MODEL = Conformer  # the registry builds this class with (config, num_classes, HRFSpec)
