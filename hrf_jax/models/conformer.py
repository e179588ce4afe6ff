"""Conformer (Gulati et al., Interspeech 2020) for utterance-level SER.

Conv subsampling x4 -> blocks of [1/2 FFN, MHSA (relative sinusoidal positions, Transformer-XL
u/v biases; absolute as an option), convolution module, 1/2 FFN, LayerNorm] -> (optional final
LayerNorm) -> masked mean pooling -> linear classifier. Pre-LN everywhere, so each HRF layer
sits after a LayerNorm.

The reference is ESPnet's ``conformer/encoder.py`` ``Encoder`` (conv2d input layer,
normalize_before, macaron FFNs, conv module, swish; ``rel_pos``/``rel_selfattn`` "latest" or
``abs_pos``/``selfattn``). By default this module differs from it in three documented fields,
all switched by ``REFERENCE`` (``build_model(..., reference=True)``): ESPnet ends the encoder
with a LayerNorm (``final_norm``), its LayerNorms use ``eps=1e-12`` (``ln_epsilon``) and it
flattens a subsampled frame channel-major (``subsampling_flatten="channel_freq"``). With those
the eval-mode function is ESPnet's encoder followed by a time-mean and a linear classifier
(``hrf_jax.convert.from_espnet_conformer`` loads its weights); dropouts (0.1 on the
embedding, residual branches and FFN inner activations, none on attention weights) and the
BatchNorm momentum are ESPnet's too. Left as they are: ESPnet's relative encoding also drops
out the position embeddings while training (``attention``); initialisation follows Flax
(LeCun-normal kernels), not PyTorch; and padding never changes a prediction here, while
ESPnet's conv module and BatchNorm statistics see padded frames of a batch.
"""

from __future__ import annotations

import dataclasses
import functools

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
    ffn_units: int | None = None  # FFN width; None: ffn_expansion * d_model
    dropout: float = 0.1
    pos_enc: str = "rel"  # "rel" (Transformer-XL) or "abs" (x*sqrt(d) + sinusoid)
    fold_bn: bool = False  # True: depthwise conv with the BatchNorm folded in, no BatchNorm
    ln_epsilon: float = 1e-6  # every LayerNorm's epsilon (ESPnet: 1e-12)
    final_norm: bool = False  # a LayerNorm after the last block (ESPnet's after_norm)
    # order of a subsampled frame's (freq, channel) features before the projection
    subsampling_flatten: str = "freq_channel"  # or "channel_freq" (ESPnet)

    @property
    def ffn_dim(self) -> int:
        return self.ffn_units or self.ffn_expansion * self.d_model


CONFIGS = {
    "light": ConformerConfig(d_model=48, num_layers=6, num_heads=4),
    "large": ConformerConfig(d_model=144, num_layers=16, num_heads=4),
}

# config fields of the reference implementation: build_model(..., reference=True)
REFERENCE: dict[str, object] = {
    "final_norm": True,
    "ln_epsilon": 1e-12,
    "subsampling_flatten": "channel_freq",
}


class ConvModule(nn.Module):
    """LN -> pointwise (d -> 2d) -> GLU -> depthwise conv -> BatchNorm -> Swish -> pointwise.

    Pointwise convs are ``HRFDense`` on ``(B, T, C)`` (target ``conv_pointwise``). Padded frames
    are zeroed before the depthwise conv, so they never reach real frames.
    """

    kernel_size: int
    hrf: HRFSpec
    dropout: float
    fold_bn: bool
    ln_epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: Array, mask: Array, *, train: bool = False) -> Array:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"conformer kernel_size must be odd, got {self.kernel_size}")
        d = x.shape[-1]
        h = nn.LayerNorm(self.ln_epsilon, name="ln")(x)
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
        ln = functools.partial(nn.LayerNorm, cfg.ln_epsilon)
        h = FeedForward(cfg.ffn_dim, nn.swish, cfg.dropout, self.hrf, name="ffn1")(
            ln(name="ln_ffn1")(x), mask, train=train
        )
        x = x + 0.5 * drop(h)
        h = ln(name="ln_attn")(x)
        if cfg.pos_enc == "rel":
            h = RelPositionAttention(cfg.num_heads, self.hrf, name="attn")(h, mask)
        else:
            h = MultiHeadAttention(cfg.num_heads, self.hrf, name="attn")(h, mask)
        x = x + drop(h)
        conv = ConvModule(cfg.kernel_size, self.hrf, cfg.dropout, cfg.fold_bn, cfg.ln_epsilon,
                          name="conv")
        x = x + conv(x, mask, train=train)
        h = FeedForward(cfg.ffn_dim, nn.swish, cfg.dropout, self.hrf, name="ffn2")(
            ln(name="ln_ffn2")(x), mask, train=train
        )
        x = x + 0.5 * drop(h)
        return ln(name="ln_out")(x)


class Conformer(nn.Module):
    """Conformer classifier: ``feats (B, T, F), mask (B, T) -> logits (B, num_classes)``.

    The encoder output ``(B, T', d)`` is sown as ``intermediates/encoder_out``.
    """

    cfg: ConformerConfig
    num_classes: int
    hrf: HRFSpec = HRFSpec()

    @nn.compact
    def __call__(self, feats: Array, mask: Array, *, train: bool = False) -> Array:
        cfg = self.cfg
        if cfg.pos_enc not in ("rel", "abs"):
            raise ValueError(f"pos_enc must be 'rel' or 'abs', got {cfg.pos_enc!r}")
        channels = cfg.subsampling_channels or cfg.d_model
        subsample = ConvSubsampling(channels, cfg.d_model, flatten=cfg.subsampling_flatten,
                                    name="subsampling")
        x, mask = subsample(feats, mask, train=train)
        # ESPnet scales the embedding by sqrt(d) for both positional-encoding types
        x = x * jnp.sqrt(float(cfg.d_model))
        if cfg.pos_enc == "abs":
            x = x + sinusoidal_encoding(jnp.arange(x.shape[1]), cfg.d_model)
        x = Dropout(cfg.dropout, deterministic=not train)(x)
        for i in range(cfg.num_layers):
            x = ConformerBlock(cfg, self.hrf, name=f"block_{i}")(x, mask, train=train)
        if cfg.final_norm:
            x = nn.LayerNorm(cfg.ln_epsilon, name="ln_final")(x)
        # the encoder output, for parity checks: apply(..., mutable=["intermediates"])
        self.sow("intermediates", "encoder_out", x)
        return self.hrf.dense(self.num_classes, "head", "classifier")(masked_mean(x, mask))


MODEL = Conformer  # the registry builds this class with (config, num_classes, HRFSpec)
