"""SpeechFormer (Chen et al., Interspeech 2022) for utterance-level SER.

Hierarchy frame -> phoneme -> word -> utterance: four stages of post-LN encoder layers with
Speech-MSA, local windows from speech-unit durations (50 ms, 400 ms, 2000 ms, then global),
merge blocks (average pooling of 50/250/1000 ms groups, Linear(C, C*expand), LayerNorm)
between stages, a positional encoding in stage 1, mean pooling and a 3-layer MLP head.

Differences from the official code (github.com/HappyColor/SpeechFormer), each a field of
``SpeechFormerConfig``; ``REFERENCE`` (``build_model(..., reference=True)``) sets all of them
to the official behaviour, which then gives the official model's eval-mode logits for the same
weights (``hrf_jax.convert.from_speechformer_official``) and trains as it does:

- ``pe_placement``: here the stage-1 encoding is added once to the residual stream after the
  stage's input LayerNorm (``"residual"``); the official code adds it to the attention input
  of every stage-1 layer only (``"attention_input"``).
- ``pe_table``: here a sinusoid computed for any length (``"sinusoid"``); the official table
  is a frozen parameter that its ``_reset_parameters`` overwrites with xavier-uniform noise
  (``"random"``: a frozen ``pe_max_len``-row table, see ``PE_COLLECTION``).
- ``window_edges``: here a local window sees only real keys (``"masked"``); the official code
  zero-pads the projected K/V, so queries near either end also weigh zero keys (``"zeros"``).
- ``merge_padding``: here a merge group averages only real frames (``"masked"``); the official
  code zero-pads the last group and averages over its full size (``"zeros"``).
- ``ln_epsilon``: 1e-6 here (flax), 1e-5 in the official (torch) LayerNorms.
- ``attention_dropout`` (0 here: residual dropout only, fused attention) and
  ``head_dropout`` (0.1 here; 0.5 in the official head, which at this project's widths kept
  the model at chance) are training-time differences.
- ``init``: flax initialisers here; ``"official"`` draws as the official code does.
- ``duration_rounding``: durations become frames by rounding here, by floor division in the
  official code (equal at a 10 ms hop).
- ``crop_input_to_heads``: the official code drops the last ``F % num_heads`` features; here
  a width not divisible by the heads is an error.
- ``input_dim_proj`` (light configs) projects the features to a smaller width; the official
  code uses the features' own width (``None``).

Padding is honoured in both modes: a padded batch gives each utterance the output it gets
alone and unpadded (the official code has no padding mask).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrf_jax.attention import sinusoidal_encoding
from hrf_jax.hrf import HRFSpec
from hrf_jax.layers import Dropout, EncoderLayer
from hrf_jax.masking import masked_mean
from hrf_jax.models.torch_init import drawn_at_init, hrf_dense_drawn_at_init, torch_rule
from hrf_jax.xla_options import NO_YNN, YNN_DOTS_ONLY, YNN_REDUCE_ONLY

Array = jax.Array

TARGETS = ("ffn", "ffn2", "attn_in", "attn_out", "merge", "head")

# The collection of the frozen PE table (``pe_table="random"``, entry ``stage_0_position``).
# ``batch_stats`` is the project's collection of non-trainable state: train state,
# checkpoints, merge_hrf and export carry it as it is, and optimizers and ``count_params`` of
# ``params`` never see it. BatchNorm folding only touches ``batch_norm`` entries.
PE_COLLECTION = "batch_stats"
PE_NAME = "stage_0_position"


def stage_sizes(
    hop_ms: float = 10.0,
    windows_ms: tuple[float, ...] = (50.0, 400.0, 2000.0),
    merges_ms: tuple[float, ...] = (50.0, 250.0, 1000.0),
    rounding: str = "round",
) -> tuple[tuple[int | None, ...], tuple[int, ...]]:
    """Per-stage attention windows and merge sizes, in tokens of that stage.

    Durations become frames at ``hop_ms`` (``rounding`` ``"round"``, or ``"floor"`` as the
    official code); a stage's tokens each span the product of the earlier merges, so
    ``window = frames(window_ms) // frames_per_token`` (made odd, centred, as in the official
    code) and ``merge = frames(merge_ms) // frames_per_token``. The last stage is global
    (``None``). At 10 ms: windows ``(5, 9, 9, None)``, merges ``(5, 5, 4)``.
    """
    if len(windows_ms) != len(merges_ms):
        raise ValueError(f"need one merge per local stage: {windows_ms} vs {merges_ms}")
    if rounding not in ("round", "floor"):
        raise ValueError(f"rounding must be 'round' or 'floor', got {rounding!r}")
    frames = (lambda ms: int(round(ms / hop_ms))) if rounding == "round" else (
        lambda ms: int(ms // hop_ms))
    windows: list[int | None] = []
    merges: list[int] = []
    per_token = 1  # input frames per token of the current stage
    for w_ms, m_ms in zip(windows_ms, merges_ms, strict=True):
        window = max(frames(w_ms) // per_token, 1)
        windows.append(window + 1 - window % 2)
        merge_frames = max(frames(m_ms), per_token)
        merges.append(max(merge_frames // per_token, 1))
        per_token = merge_frames
    windows.append(None)
    return tuple(windows), tuple(merges)


@dataclasses.dataclass(frozen=True)
class SpeechFormerConfig:
    """Sizes of a SpeechFormer; ``expand`` (1,1,1) is SpeechFormer-S, (1,1,2) is -B.

    The fields after ``head_dropout`` choose between this project's behaviour (defaults) and
    the official code's (``REFERENCE``); the module docstring lists them.
    """

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
    # The head's hidden layers are d/2 and d/4 wide (the official head); at light widths
    # (d = 48: 24 and 12 units) a run that loses a whole layer's ReLUs stays at chance. A
    # floor keeps them wider (a probe: it did not keep them alive, results/baselines.md).
    head_min_width: int = 0
    attention_dropout: float = 0.0  # on the attention weights, while training
    ln_epsilon: float = 1e-6  # every LayerNorm
    pe_placement: str = "residual"  # "residual" | "attention_input" (every stage-1 layer)
    # "sinusoid": computed for any length; "random": a frozen table of pe_max_len rows in
    # PE_COLLECTION, drawn xavier-uniform at init (the official table), which can hold any
    # table (a converter loads one). Frames from pe_max_len on get no encoding (zeros): the
    # official code fails there, and zeros stay closer to what a model trained with a table
    # of |PE| <= 0.05 has seen than any continuation would.
    pe_table: str = "sinusoid"
    pe_max_len: int = 2000
    window_edges: str = "masked"  # "masked" | "zeros" (zero keys beyond the utterance)
    merge_padding: str = "masked"  # "masked" | "zeros" (a partial group averages zeros too)
    duration_rounding: str = "round"  # "round" | "floor" (ms -> frames, see stage_sizes)
    crop_input_to_heads: bool = False  # drop the last F % num_heads features (no projection)
    # "flax": flax initialisers; "official": xavier-uniform encoder-layer kernels (q/k/v with
    # the fans of the fused qkv projection) and torch's nn.Linear init for every other linear
    # and every bias, as the official code draws them
    init: str = "flax"

    def __post_init__(self) -> None:
        choices = {"pe_placement": ("residual", "attention_input"),
                   "pe_table": ("sinusoid", "random"), "window_edges": ("masked", "zeros"),
                   "merge_padding": ("masked", "zeros"), "duration_rounding": ("round", "floor"),
                   "init": ("flax", "official")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


CONFIGS = {
    "light": SpeechFormerConfig(input_dim_proj=48, expand=(1, 1, 1)),
    "large": SpeechFormerConfig(input_dim_proj=None, expand=(1, 1, 2)),
}

# config fields of the reference implementation: build_model(..., reference=True)
REFERENCE: dict[str, object] = {
    "input_dim_proj": None,
    "dropout": 0.1,
    "head_dropout": 0.5,
    "attention_dropout": 0.1,
    "ln_epsilon": 1e-5,
    "pe_placement": "attention_input",
    "pe_table": "random",
    "pe_max_len": 2000,
    "window_edges": "zeros",
    "merge_padding": "zeros",
    "duration_rounding": "floor",
    "crop_input_to_heads": True,
    "init": "official",
}


def merge_tokens(x: Array, mask: Array, size: int, padding: str = "masked"
                 ) -> tuple[Array, Array]:
    """Average of groups of ``size`` tokens: ``(B, T, C) -> (B, ceil(T/size), C)``.

    A group is real when it holds a real token. ``padding="masked"``: only real tokens enter
    its average; ``"zeros"``: the sum of its real tokens over ``size``, as when the utterance
    is zero-padded to a multiple of ``size`` and every group averaged.
    """
    b, t, c = x.shape
    pad = -t % size
    x = jnp.pad(x, [(0, 0), (0, pad), (0, 0)]).reshape(b, -1, size, c)
    m = jnp.pad(mask, [(0, 0), (0, pad)]).reshape(b, -1, size)
    count = jnp.maximum(m.sum(-1, keepdims=True), 1) if padding == "masked" else size
    return jnp.where(m[..., None], x, 0).sum(2) / jnp.asarray(count, x.dtype), m.any(-1)


def official_rule(path: tuple[str, ...], fan_in: int, fan_out: int) -> tuple[float, float]:
    """The official ``_reset_parameters`` on an encoder layer: xavier-uniform kernels (q/k/v
    with the fans of the one fused ``C -> 3C`` projection they are thirds of), biases left at
    nn.Linear's ``+-1/sqrt(fan_in)``."""
    fused = 3 if path[-1] in ("query", "key", "value") else 1
    return math.sqrt(6 / (fan_in + fan_out * fused)), 1 / math.sqrt(fan_in)


class SpeechFormer(nn.Module):
    """``feats (B, T, F), mask (B, T) -> logits (B, num_classes)``."""

    cfg: SpeechFormerConfig
    num_classes: int
    hrf: HRFSpec = HRFSpec()
    # the local attention's shifted keys: on CPU its train step wants YNNPACK for dots only,
    # a batch in inference no YNNPACK, one utterance (no shifted sums) reductions only
    # (hrf_jax.xla_options)
    xla_cpu_train_options: ClassVar[dict[str, str]] = YNN_DOTS_ONLY
    xla_cpu_eval_options: ClassVar[dict[str, str]] = NO_YNN
    xla_cpu_utterance_options: ClassVar[dict[str, str]] = YNN_REDUCE_ONLY

    def _dense(self, features: int, target: str, name: str) -> nn.Module:
        """``hrf.dense``, drawn as torch's nn.Linear at init under ``init="official"``."""
        drawn = self.cfg.init == "official" and self.is_initializing()
        return hrf_dense_drawn_at_init(self.hrf, features, target, name,
                                       self.make_rng("params") if drawn else None, torch_rule)

    def _positions(self, length: int, d: int) -> Array:
        """The stage-1 positional encoding of ``length`` frames, ``(length, d)``."""
        cfg = self.cfg
        if cfg.pe_table == "sinusoid":
            # computed while tracing, so the compiled step holds a constant: evaluated inside
            # it, the sines/cosines were ~9 % of a one-utterance forward on CPU
            with jax.ensure_compile_time_eval():
                return sinusoidal_encoding(jnp.arange(length), d)
        table = self.variable(PE_COLLECTION, PE_NAME, lambda: nn.initializers.xavier_uniform()(
            self.make_rng("params"), (cfg.pe_max_len, d), jnp.float32)).value
        if table.shape != (cfg.pe_max_len, d):
            raise ValueError(f"{PE_COLLECTION}/{PE_NAME} has shape {table.shape}, expected "
                             f"{(cfg.pe_max_len, d)} (pe_max_len, width)")
        return jnp.pad(table[:length], [(0, max(length - cfg.pe_max_len, 0)), (0, 0)])

    @nn.compact
    def __call__(self, feats: Array, mask: Array, *, train: bool = False) -> Array:
        cfg = self.cfg
        windows, merges = stage_sizes(cfg.hop_ms, cfg.windows_ms, cfg.merges_ms,
                                      cfg.duration_rounding)
        if not len(cfg.num_layers) == len(windows) == len(cfg.expand) + 1:
            raise ValueError(
                f"num_layers {cfg.num_layers} needs {len(windows)} stages and expand "
                f"{cfg.expand} one entry per merge ({len(merges)})"
            )
        x = feats
        if cfg.input_dim_proj is not None:
            x = nn.Dense(cfg.input_dim_proj, name="input_proj")(x)
        elif cfg.crop_input_to_heads:
            x = x[..., : x.shape[-1] // cfg.num_heads * cfg.num_heads]
        for s, (num, window) in enumerate(zip(cfg.num_layers, windows, strict=True)):
            d = x.shape[-1]
            x = nn.LayerNorm(cfg.ln_epsilon, name=f"stage_{s}_ln_in")(x)
            pos = None
            if s == 0:
                pos = self._positions(x.shape[1], d)
                if cfg.pe_placement == "residual":
                    x, pos = x + pos, None
            for i in range(num):
                layer_cls = EncoderLayer
                if cfg.init == "official" and self.is_initializing():  # a key of its own
                    layer_cls = drawn_at_init(EncoderLayer, self.make_rng("params"),
                                              official_rule, self.hrf.init)
                x = layer_cls(
                    cfg.num_heads,
                    int(round(cfg.ffn_ratio * d)),
                    self.hrf,
                    cfg.dropout,
                    window=window,
                    ln_epsilon=cfg.ln_epsilon,
                    attention_dropout=cfg.attention_dropout,
                    window_edges=cfg.window_edges,
                    name=f"stage_{s}_layer_{i}",
                )(x, mask, train=train, pos=pos)
            if s < len(merges):
                x, mask = merge_tokens(x, mask, merges[s], cfg.merge_padding)
                x = self._dense(d * cfg.expand[s], "merge", f"merge_{s}")(x)
                x = nn.LayerNorm(cfg.ln_epsilon, name=f"merge_{s}_ln")(x)
        x = masked_mean(x, mask)
        d = x.shape[-1]
        for i, width in enumerate((max(d // 2, cfg.head_min_width),
                                   max(d // 4, cfg.head_min_width))):
            x = nn.relu(self._dense(width, "head", f"head_{i}")(x))
            x = Dropout(cfg.head_dropout, deterministic=not train)(x)
        return self._dense(self.num_classes, "head", "classifier")(x)


MODEL = SpeechFormer  # the registry builds this class with (config, num_classes, HRFSpec)
