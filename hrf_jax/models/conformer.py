"""Conformer (Gulati et al., Interspeech 2020) for utterance-level SER.

Conv subsampling x4 -> blocks of [1/2 FFN, MHSA (relative sinusoidal positions, Transformer-XL
u/v biases; absolute as an option), convolution module, 1/2 FFN, LayerNorm] -> (optional final
LayerNorm) -> masked mean pooling -> linear classifier. Pre-LN everywhere, so each HRF layer
sits after a LayerNorm.

The reference is ESPnet's ``conformer/encoder.py`` ``Encoder`` (conv2d input layer,
normalize_before, macaron FFNs, conv module, swish; ``rel_pos``/``rel_selfattn`` "latest" or
``abs_pos``/``selfattn``). By default its eval-mode function differs from ESPnet's in three
documented fields, all switched by ``REFERENCE`` (``build_model(..., reference=True)``):
ESPnet ends the encoder with a LayerNorm (``final_norm``), its LayerNorms use ``eps=1e-12``
(``ln_epsilon``) and it flattens a subsampled frame channel-major
(``subsampling_flatten="channel_freq"``). With those the eval-mode function is ESPnet's
encoder followed by a time-mean and a linear classifier
(``hrf_jax.convert.from_espnet_conformer`` loads its weights); dropouts (0.1 on the
embedding, residual branches and FFN inner activations, none on attention weights) and the
BatchNorm momentum are ESPnet's too. Two training-time fields complete the preset:
``pos_dropout`` drops the relative position embeddings while training as ESPnet's
``RelPositionalEncoding`` does (at its ``positional_dropout_rate``, 0.1; here each block draws
its own mask, ESPnet one per forward pass for all blocks), and ``init="espnet"`` draws the
parameters as ESPnet's bare ``Encoder`` leaves them, PyTorch's module defaults
(``hrf_jax.models.torch_init``): nothing in it re-initialises, and ESPnet's own
``initialize()`` keeps them at its default ``transformer_init="pytorch"``. Left as it is:
padding never changes a prediction here, while ESPnet's conv module and BatchNorm statistics
see padded frames of a batch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrf_jax.attention import MultiHeadAttention, RelPositionAttention, sinusoidal_encoding
from hrf_jax.conv_ops import use_convolution_ops
from hrf_jax.hrf import HRFSpec
from hrf_jax.layers import Dropout, FeedForward
from hrf_jax.masking import MaskedBatchNorm, masked_mean, zero_padding
from hrf_jax.models.torch_init import drawn_at_init, hrf_dense_drawn_at_init, torch_rule
from hrf_jax.subsampling import ConvSubsampling
from hrf_jax.xla_options import YNN_REDUCE_ONLY

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
    # "rel" only: dropout of the relative position table while training (ESPnet: 0.1)
    pos_dropout: float = 0.0
    # "flax": flax initialisers; "espnet": PyTorch's module defaults, as ESPnet's Encoder
    # draws them (see hrf_jax.models.torch_init)
    init: str = "flax"

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
    "pos_dropout": 0.1,
    "init": "espnet",
}


class DepthwiseConv1D(nn.Module):
    """``nn.Conv(C, (K,), padding="SAME", feature_group_count=C)`` on ``(B, T, C)``: same
    parameter tree (``kernel (K, 1, C)``, ``bias (C,)``), init and output.

    ``fast=True`` avoids XLA's grouped convolution, whose CPU forward and backward cost a third
    of a light Conformer block: up to ``T = 4K`` frames one batched matmul with the banded
    ``(T, T)`` matrix of each channel, beyond that ``K`` shifted multiply-adds that XLA fuses
    into one loop (measured faster past ``T ~ 4K``: the band costs ``T/K`` times the
    multiply-adds). ``None`` (the default): fast, except under
    ``hrf_jax.conv_ops.convolution_ops()`` (export), where the convolution stays one op for
    ONNX and LiteRT.
    """

    kernel_size: int

    @nn.compact
    def __call__(self, x: Array, fast: bool | None = None) -> Array:
        k, (t, c) = self.kernel_size, x.shape[-2:]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, 1, c))
        bias = self.param("bias", nn.initializers.zeros_init(), (c,))
        half = k // 2
        if fast is None:
            fast = not use_convolution_ops()
        if not fast:
            y = jax.lax.conv_general_dilated(x, kernel, (1,), [(half, half)],
                                             dimension_numbers=("NWC", "WIO", "NWC"),
                                             feature_group_count=c)
        elif t <= 4 * k:
            # band[t, s, c] = kernel[s - t + half, c] inside the kernel, else 0
            tap = jnp.arange(t)[None, :] - jnp.arange(t)[:, None] + half
            inside = (tap >= 0) & (tap < k)
            band = jnp.where(inside[..., None], kernel[jnp.clip(tap, 0, k - 1), 0], 0)
            y = jnp.einsum("tsc,bsc->btc", band, x)
        else:
            xp = jnp.pad(x, ((0, 0), (half, half), (0, 0)))
            y = sum(xp[:, i : i + t] * kernel[i, 0] for i in range(k))
        return y + bias


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
        h = DepthwiseConv1D(self.kernel_size, name="depthwise")(zero_padding(h, mask))
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
            h = RelPositionAttention(cfg.num_heads, self.hrf, cfg.pos_dropout, name="attn")(
                h, mask, deterministic=not train)
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
    # inference on CPU measured fastest with YNNPACK for reductions only (hrf_jax.xla_options)
    xla_cpu_eval_options: ClassVar[dict[str, str]] = YNN_REDUCE_ONLY

    @nn.compact
    def __call__(self, feats: Array, mask: Array, *, train: bool = False) -> Array:
        cfg = self.cfg
        if cfg.pos_enc not in ("rel", "abs"):
            raise ValueError(f"pos_enc must be 'rel' or 'abs', got {cfg.pos_enc!r}")
        if cfg.init not in ("flax", "espnet"):
            raise ValueError(f"init must be 'flax' or 'espnet', got {cfg.init!r}")
        channels = cfg.subsampling_channels or cfg.d_model
        subsampling = self._drawn(ConvSubsampling)
        subsample = subsampling(channels, cfg.d_model, flatten=cfg.subsampling_flatten,
                                name="subsampling")
        x, mask = subsample(feats, mask, train=train)
        # ESPnet scales the embedding by sqrt(d) for both positional-encoding types
        x = x * jnp.sqrt(float(cfg.d_model))
        if cfg.pos_enc == "abs":
            x = x + sinusoidal_encoding(jnp.arange(x.shape[1]), cfg.d_model)
        x = Dropout(cfg.dropout, deterministic=not train)(x)
        for i in range(cfg.num_layers):
            x = self._drawn(ConformerBlock)(cfg, self.hrf, name=f"block_{i}")(x, mask,
                                                                             train=train)
        if cfg.final_norm:
            x = nn.LayerNorm(cfg.ln_epsilon, name="ln_final")(x)
        # the encoder output, for parity checks: apply(..., mutable=["intermediates"])
        self.sow("intermediates", "encoder_out", x)
        key = self.make_rng("params") if self._espnet_draws() else None
        classifier = hrf_dense_drawn_at_init(self.hrf, self.num_classes, "head", "classifier",
                                             key, torch_rule)
        return classifier(masked_mean(x, mask))

    def _espnet_draws(self) -> bool:
        return self.cfg.init == "espnet" and self.is_initializing()

    def _drawn(self, cls: type[nn.Module]) -> type[nn.Module]:
        """``cls``, drawn at init as ESPnet's PyTorch modules under ``init="espnet"``, each
        child from a key of its own."""
        if not self._espnet_draws():
            return cls
        return drawn_at_init(cls, self.make_rng("params"), torch_rule, self.hrf.init)


MODEL = Conformer  # the registry builds this class with (config, num_classes, HRFSpec)
