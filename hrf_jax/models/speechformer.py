"""SpeechFormer (Chen et al., Interspeech 2022) for utterance-level SER.

Hierarchy frame -> phoneme -> word -> utterance: four stages of post-LN encoder layers with
Speech-MSA, local windows from speech-unit durations (50 ms, 400 ms, 2000 ms, then global),
merge blocks (masked average pooling of 50/250/1000 ms groups, Linear(C, C*expand), LayerNorm)
between stages, fixed sinusoidal PE in stage 1, masked mean pooling and a 3-layer MLP head.

Differences from the official code: padding is honoured everywhere (attention windows see
only real keys, merges average only real frames, pooling is masked) where the original lets
zero padding into windows and averages; the stage-1 positional encoding is added once after
the stage's input LayerNorm instead of inside every stage-1 layer; attention-weight dropout
is replaced by residual dropout (fused attention); ``input_dim_proj`` (light configs) projects
the input features to a smaller width with a linear layer, the original uses the features'
own width.
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

Array = jax.Array

TARGETS = ("ffn", "ffn2", "attn_in", "attn_out", "merge", "head")


def stage_sizes(
    hop_ms: float = 10.0,
    windows_ms: tuple[float, ...] = (50.0, 400.0, 2000.0),
    merges_ms: tuple[float, ...] = (50.0, 250.0, 1000.0),
) -> tuple[tuple[int | None, ...], tuple[int, ...]]:
    """Per-stage attention windows and merge sizes, in tokens of that stage.

    Durations become frames at ``hop_ms``; a stage's tokens each span the product of the
    earlier merges, so ``window = frames(window_ms) // frames_per_token`` (made odd, centred,
    as in the official code) and ``merge = frames(merge_ms) // frames_per_token``. The last
    stage is global (``None``). At 10 ms: windows ``(5, 9, 9, None)``, merges ``(5, 5, 4)``.
    """
    if len(windows_ms) != len(merges_ms):
        raise ValueError(f"need one merge per local stage: {windows_ms} vs {merges_ms}")
    windows: list[int | None] = []
    merges: list[int] = []
    per_token = 1  # input frames per token of the current stage
    for w_ms, m_ms in zip(windows_ms, merges_ms, strict=True):
        window = max(int(round(w_ms / hop_ms)) // per_token, 1)
        windows.append(window + 1 - window % 2)
        merge_frames = max(int(round(m_ms / hop_ms)), per_token)
        merges.append(max(merge_frames // per_token, 1))
        per_token = merge_frames
    windows.append(None)
    return tuple(windows), tuple(merges)


@dataclasses.dataclass(frozen=True)
class SpeechFormerConfig:
    """Sizes of a SpeechFormer; ``expand`` (1,1,1) is SpeechFormer-S, (1,1,2) is -B."""

    input_dim_proj: int | None  # None: width = input feature width (the original)
    num_layers: tuple[int, ...] = (2, 2, 4, 4)
    num_heads: int = 8
    ffn_ratio: float = 0.5  # FFN width = ffn_ratio * stage width
    expand: tuple[int, ...] = (1, 1, 1)
    hop_ms: float = 10.0
    windows_ms: tuple[float, ...] = (50.0, 400.0, 2000.0)
    merges_ms: tuple[float, ...] = (50.0, 250.0, 1000.0)
    dropout: float = 0.1
    # The original head drops 0.5 after each ReLU of d -> d/2 -> d/4; at our widths
    # (12-64 units) that killed every ReLU and left the model at chance on the synthetic
    # corpus (experiments/results/synthetic_all.md, first run), so 0.1 is the default here.
    head_dropout: float = 0.1


CONFIGS = {
    "light": SpeechFormerConfig(input_dim_proj=48, expand=(1, 1, 1)),
    "large": SpeechFormerConfig(input_dim_proj=None, expand=(1, 1, 2)),
}

# config fields of the reference implementation: build_model(..., reference=True)
REFERENCE: dict[str, object] = {}


def merge_tokens(x: Array, mask: Array, size: int) -> tuple[Array, Array]:
    """Masked average of groups of ``size`` tokens: ``(B, T, C) -> (B, ceil(T/size), C)``.

    A group is real when it holds a real token; only real tokens enter its average.
    """
    b, t, c = x.shape
    pad = -t % size
    x = jnp.pad(x, [(0, 0), (0, pad), (0, 0)]).reshape(b, -1, size, c)
    m = jnp.pad(mask, [(0, 0), (0, pad)]).reshape(b, -1, size)
    count = jnp.maximum(m.sum(-1, keepdims=True), 1).astype(x.dtype)
    return jnp.where(m[..., None], x, 0).sum(2) / count, m.any(-1)


class SpeechFormer(nn.Module):
    """``feats (B, T, F), mask (B, T) -> logits (B, num_classes)``."""

    cfg: SpeechFormerConfig
    num_classes: int
    hrf: HRFSpec = HRFSpec()

    @nn.compact
    def __call__(self, feats: Array, mask: Array, *, train: bool = False) -> Array:
        cfg = self.cfg
        windows, merges = stage_sizes(cfg.hop_ms, cfg.windows_ms, cfg.merges_ms)
        if not len(cfg.num_layers) == len(windows) == len(cfg.expand) + 1:
            raise ValueError(
                f"num_layers {cfg.num_layers} needs {len(windows)} stages and expand "
                f"{cfg.expand} one entry per merge ({len(merges)})"
            )
        x = feats
        if cfg.input_dim_proj is not None:
            x = nn.Dense(cfg.input_dim_proj, name="input_proj")(x)
        for s, (num, window) in enumerate(zip(cfg.num_layers, windows, strict=True)):
            d = x.shape[-1]
            x = nn.LayerNorm(name=f"stage_{s}_ln_in")(x)
            if s == 0:
                x = x + sinusoidal_encoding(jnp.arange(x.shape[1]), d)
            for i in range(num):
                x = EncoderLayer(
                    cfg.num_heads,
                    int(round(cfg.ffn_ratio * d)),
                    self.hrf,
                    cfg.dropout,
                    window=window,
                    name=f"stage_{s}_layer_{i}",
                )(x, mask, train=train)
            if s < len(merges):
                x, mask = merge_tokens(x, mask, merges[s])
                x = self.hrf.dense(d * cfg.expand[s], "merge", f"merge_{s}")(x)
                x = nn.LayerNorm(name=f"merge_{s}_ln")(x)
        x = masked_mean(x, mask)
        d = x.shape[-1]
        for i, width in enumerate((d // 2, d // 4)):
            x = nn.relu(self.hrf.dense(width, "head", f"head_{i}")(x))
            x = Dropout(cfg.head_dropout, deterministic=not train)(x)
        return self.hrf.dense(self.num_classes, "head", "classifier")(x)


MODEL = SpeechFormer  # the registry builds this class with (config, num_classes, HRFSpec)
