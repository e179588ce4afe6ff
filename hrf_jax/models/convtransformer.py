"""ConvTransformer (ESPnet-ST / fairseq ``convtransformer``) for utterance-level SER.

Two 3x3 stride-2 Conv2d + ReLU -> linear projection to d -> ``x * sqrt(d)`` + sinusoidal PE
-> post-LN Transformer encoder layers (pre-LN option, then by default a final LayerNorm)
-> masked mean pooling -> linear classifier.

The reference is fairseq's ``models/speech_to_text/convtransformer.py``
``ConvTransformerEncoder`` (``convtransformer_espnet`` is the ``large`` size). By default this
module differs from it in documented fields, all switched by ``REFERENCE``
(``build_model(..., reference=True)``): fairseq pads both convs by one
(``subsampling_padding="same"``: ``ceil(F/4)`` frequency bins and ``T' = ceil(T/4)``, the mask
follows), flattens a subsampled frame channel-major (``subsampling_flatten``), uses its own
sinusoid (``pos_enc="fairseq"``: ``[sin | cos]`` halves, frequencies ``10000^(-i/(d/2-1))``,
positions from 2), LayerNorm ``eps=1e-5`` (``ln_epsilon``) and no dropout after the FFN
activation (``activation_dropout=0.0``). fairseq builds a final LayerNorm for pre-LN encoders
but never applies it (``final_norm=False``). With those the eval-mode function is fairseq's
encoder followed by a masked time-mean and a linear classifier
(``hrf_jax.convert.from_fairseq_convtransformer`` loads its weights) and the dropouts are
fairseq's (0.1 on the embedding and residual branches, none on attention weights or the FFN
activations). ``init="fairseq"`` draws the parameters as fairseq does
(``hrf_jax.models.torch_init``): PyTorch's defaults for the convs, ``out`` and the FFN's
``fc1``/``fc2`` (plain ``nn.Linear`` in ``transformer_layer.py``), and
``MultiheadAttention.reset_parameters`` for the attention (q/k/v xavier-uniform with gain
``1/sqrt(2)``, out projection xavier-uniform with a zero bias). Left as it is: each
utterance of a padded batch gives its unpadded output here (``ceil(L/4)`` real frames), while
fairseq's second conv reads the first one's outputs on padding.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrf_jax.attention import sinusoidal_encoding
from hrf_jax.hrf import HRFSpec
from hrf_jax.layers import Dropout, EncoderLayer
from hrf_jax.masking import masked_mean
from hrf_jax.models.torch_init import (
    Rule,
    drawn_at_init,
    fairseq_rule,
    hrf_dense_drawn_at_init,
    torch_rule,
)
from hrf_jax.subsampling import ConvSubsampling
from hrf_jax.xla_options import YNN_REDUCE_ONLY

Array = jax.Array

TARGETS = ("ffn", "ffn2", "attn_in", "attn_out", "head")

# fairseq numbers positions from its padding index (1) + 1
FAIRSEQ_FIRST_POSITION = 2


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
    final_norm: bool = True  # pre-LN only: a LayerNorm after the last layer
    subsampling_padding: str = "valid"  # or "same": one zero each side (fairseq's padding=1)
    # order of a subsampled frame's (freq, channel) features before the projection
    subsampling_flatten: str = "freq_channel"  # or "channel_freq" (fairseq)
    pos_enc: str = "sinusoid"  # interleaved sin/cos from position 0, or "fairseq"
    ln_epsilon: float = 1e-6
    attention_dropout: float = 0.0  # on the attention weights while training
    activation_dropout: float | None = None  # after the FFN activation; None: dropout
    # "flax": flax initialisers; "fairseq": PyTorch's defaults and fairseq's attention init
    # (see hrf_jax.models.torch_init)
    init: str = "flax"


CONFIGS = {
    "light": ConvTransformerConfig(d_model=64, num_layers=4, num_heads=4, ffn_dim=512,
                                   subsampling_channels=32),
    "large": ConvTransformerConfig(d_model=256, num_layers=12, num_heads=4, ffn_dim=2048),
}

# config fields of the reference implementation: build_model(..., reference=True)
REFERENCE: dict[str, object] = {
    "final_norm": False,
    "subsampling_padding": "same",
    "subsampling_flatten": "channel_freq",
    "pos_enc": "fairseq",
    "ln_epsilon": 1e-5,
    "activation_dropout": 0.0,
    "init": "fairseq",
}


def fairseq_sinusoidal_encoding(length: int, dim: int) -> Array:
    """fairseq's ``SinusoidalPositionalEmbedding`` of frames ``0 .. length-1``: ``(L, dim)``.

    Frame ``t`` has position ``t + 2``; channel ``i < dim/2`` is ``sin(pos * w_i)`` and channel
    ``dim/2 + i`` is ``cos(pos * w_i)``, ``w_i = 10000^(-i/(dim/2 - 1))``; an odd ``dim`` gets
    a zero last channel.
    """
    half = dim // 2
    inv_freq = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(jnp.log(10000.0) / (half - 1)))
    positions = jnp.arange(length, dtype=jnp.float32) + FAIRSEQ_FIRST_POSITION
    angles = positions[:, None] * inv_freq[None, :]
    pe = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)
    return jnp.pad(pe, ((0, 0), (0, dim % 2)))


class ConvTransformer(nn.Module):
    """``feats (B, T, F), mask (B, T) -> logits (B, num_classes)``.

    The encoder output ``(B, T', d)`` is sown as ``intermediates/encoder_out``.
    """

    cfg: ConvTransformerConfig
    num_classes: int
    hrf: HRFSpec = HRFSpec()
    # inference on CPU measured fastest with YNNPACK for reductions only (hrf_jax.xla_options)
    xla_cpu_eval_options: ClassVar[dict[str, str]] = YNN_REDUCE_ONLY

    @nn.compact
    def __call__(self, feats: Array, mask: Array, *, train: bool = False) -> Array:
        cfg = self.cfg
        if cfg.pos_enc not in ("sinusoid", "fairseq"):
            raise ValueError(f"pos_enc must be 'sinusoid' or 'fairseq', got {cfg.pos_enc!r}")
        if cfg.init not in ("flax", "fairseq"):
            raise ValueError(f"init must be 'flax' or 'fairseq', got {cfg.init!r}")
        channels = cfg.subsampling_channels or cfg.d_model
        subsampling = self._drawn(ConvSubsampling, torch_rule)
        # one utterance at T=651 is faster with convolution ops (2.39 -> 2.06 ms), unlike
        # the Conformer's (BENCHMARKS.md, "One utterance")
        subsample = subsampling(channels, cfg.d_model, cfg.subsampling_padding,
                                cfg.subsampling_flatten, inference_im2col=False,
                                name="subsampling")
        x, mask = subsample(feats, mask, train=train)
        if cfg.pos_enc == "fairseq":
            pe = fairseq_sinusoidal_encoding(x.shape[1], cfg.d_model)
        else:
            pe = sinusoidal_encoding(jnp.arange(x.shape[1]), cfg.d_model)
        x = x * jnp.sqrt(float(cfg.d_model)) + pe
        x = Dropout(cfg.dropout, deterministic=not train)(x)
        for i in range(cfg.num_layers):
            x = self._drawn(EncoderLayer, fairseq_rule)(
                cfg.num_heads, cfg.ffn_dim, self.hrf, cfg.dropout, cfg.pre_ln,
                ln_epsilon=cfg.ln_epsilon, attention_dropout=cfg.attention_dropout,
                activation_dropout=cfg.activation_dropout, name=f"layer_{i}",
            )(x, mask, train=train)
        if cfg.pre_ln and cfg.final_norm:
            x = nn.LayerNorm(cfg.ln_epsilon, name="ln_out")(x)
        # the encoder output, for parity checks: apply(..., mutable=["intermediates"])
        self.sow("intermediates", "encoder_out", x)
        key = self.make_rng("params") if self._fairseq_draws() else None
        classifier = hrf_dense_drawn_at_init(self.hrf, self.num_classes, "head", "classifier",
                                             key, torch_rule)
        return classifier(masked_mean(x, mask))

    def _fairseq_draws(self) -> bool:
        return self.cfg.init == "fairseq" and self.is_initializing()

    def _drawn(self, cls: type[nn.Module], rule: Rule) -> type[nn.Module]:
        """``cls``, drawn at init by ``rule`` under ``init="fairseq"``, each child from a
        key of its own."""
        if not self._fairseq_draws():
            return cls
        return drawn_at_init(cls, self.make_rng("params"), rule, self.hrf.init)


MODEL = ConvTransformer  # the registry builds this class with (config, num_classes, HRFSpec)
