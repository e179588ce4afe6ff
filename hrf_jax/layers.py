"""Shared Flax Linen blocks; the HRF-capable linear layer lives here.

HRF (High-Rank Factorization, Zhang et al. 2024) widens a linear layer while it
trains: ``y = ((x @ K_0 + b_0) @ K_1 + b_1) ... @ K + b`` with no nonlinearity,
normalisation or dropout between the factors, so ``merge_hrf`` can collapse the
chain back into one ``(K, b)`` for deployment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrf_jax.local_attention import local_attention

Array = jax.Array
Dtype = Any

HRF_PREFIX = "hrf_"
HRF_INITS = ("variance_preserving", "orthogonal", "xavier")
HRF_BASES = ("in", "out")

_default_kernel_init = nn.initializers.lecun_normal()


def hrf_width(in_features: int, out_features: int, ratio: float, base: str = "in") -> int:
    """Width ``r`` of the inserted layers: ``ratio * in`` (paper) or ``ratio * out``."""
    if base not in HRF_BASES:
        raise ValueError(f"hrf_base must be one of {HRF_BASES}, got {base!r}")
    width = int(round(ratio * (in_features if base == "in" else out_features)))
    if width < 1:
        raise ValueError(f"hrf ratio {ratio} with base {base!r} gives an empty layer")
    return width


def hrf_kernel_init(name: str) -> Callable[..., Array]:
    """Initialiser of the inserted HRF kernels.

    ``variance_preserving`` (default): LeCun normal, variance ``1/fan_in``, so each
    linear factor keeps the activation variance and the host layer (LeCun normal
    over the wider fan-in) starts with the same output scale as the plain layer.
    ``orthogonal``: (semi-)orthogonal, norm preserving. ``xavier``: Glorot uniform.
    """
    if name == "variance_preserving":
        return nn.initializers.lecun_normal()
    if name == "orthogonal":
        return nn.initializers.orthogonal()
    if name == "xavier":
        return nn.initializers.xavier_uniform()
    raise ValueError(f"hrf_init must be one of {HRF_INITS}, got {name!r}")


class HRFDense(nn.Module):
    """``nn.Dense`` with an optional HRF chain in front of it.

    ``hrf_ratio=0`` gives exactly ``nn.Dense``'s parameter tree ``{kernel, bias}``.
    ``hrf_ratio=k`` adds sub-trees ``hrf_0 .. hrf_{depth-1}`` mapping ``d -> r -> .. -> r``
    (``r = k * d``, or ``k * features`` with ``hrf_base="out"``) and the host kernel
    becomes ``(r, features)``. The HRF layers carry a bias only when the host does,
    so the merged tree always has the plain layer's structure.
    Shapes: ``(..., d) -> (..., features)``.
    """

    features: int
    use_bias: bool = True
    hrf_ratio: float = 0
    hrf_depth: int = 1
    hrf_bias: bool = True
    hrf_init: str = "variance_preserving"
    hrf_base: str = "in"
    kernel_init: Callable[..., Array] = _default_kernel_init
    bias_init: Callable[..., Array] = nn.initializers.zeros_init()
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.hrf_ratio:
            if self.hrf_depth < 1:
                raise ValueError(f"hrf_depth must be >= 1, got {self.hrf_depth}")
            width = hrf_width(x.shape[-1], self.features, self.hrf_ratio, self.hrf_base)
            for i in range(self.hrf_depth):
                x = nn.Dense(
                    width,
                    use_bias=self.use_bias and self.hrf_bias,
                    kernel_init=hrf_kernel_init(self.hrf_init),
                    bias_init=nn.initializers.zeros_init(),
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    precision=self.precision,
                    name=f"{HRF_PREFIX}{i}",
                )(x)
        kernel = self.param(
            "kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jnp.matmul(x, kernel, precision=self.precision)
        if bias is not None:
            y = y + bias
        return y


class Dropout(nn.Module):
    """Inverted dropout drawing 16 random bits per element instead of ``nn.Dropout``'s 32.

    One 32-bit draw serves two elements, which halves the random-number work that dominates
    dropout on CPU (threefry); the drop probability is ``rate`` rounded to a multiple of
    ``2**-16``. Uses the ``dropout`` rng collection, like ``nn.Dropout``.
    """

    rate: float
    deterministic: bool | None = None

    @nn.compact
    def __call__(self, x: Array, deterministic: bool | None = None) -> Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic or self.rate == 0:
            return x
        if not 0 <= self.rate < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {self.rate}")
        c = x.shape[-1]
        bits = jax.random.bits(self.make_rng("dropout"), x.shape[:-1] + ((c + 1) // 2,))
        halves = jnp.concatenate([bits & 0xFFFF, bits >> 16], axis=-1)[..., :c]
        keep = halves >= jnp.uint32(round(self.rate * 2**16))
        return jnp.where(keep, x / jnp.asarray(1 - self.rate, x.dtype), 0).astype(x.dtype)


class FeedForward(nn.Module):
    """Transformer FFN ``fc2(dropout(act(fc1(x))))``; HRF sits inside ``fc1``.

    ``hrf_targets`` may add ``"ffn2"`` to factor the second linear as well.
    Shapes: ``(B, T, d) -> (B, T, d_out or d)``.
    """

    hidden: int
    out_features: int | None = None
    activation: Callable[[Array], Array] = nn.relu
    dropout: float = 0.0
    hrf_ratio: float = 0
    hrf_depth: int = 1
    hrf_bias: bool = True
    hrf_init: str = "variance_preserving"
    hrf_base: str = "in"
    hrf_targets: tuple[str, ...] = ("ffn",)
    dtype: Dtype | None = None

    def _dense(self, features: int, name: str, target: str) -> HRFDense:
        return HRFDense(
            features,
            hrf_ratio=self.hrf_ratio if target in self.hrf_targets else 0,
            hrf_depth=self.hrf_depth,
            hrf_bias=self.hrf_bias,
            hrf_init=self.hrf_init,
            hrf_base=self.hrf_base,
            dtype=self.dtype,
            name=name,
        )

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        out = self.out_features or x.shape[-1]
        h = self._dense(self.hidden, "fc1", "ffn")(x)
        h = self.activation(h)
        h = Dropout(self.dropout, deterministic=not train)(h)
        return self._dense(out, "fc2", "ffn2")(h)


# --------------------------------------------------------------------------- backbone blocks

HRF_TARGETS = ("ffn", "ffn2", "attn_in", "attn_out", "conv_pointwise", "merge", "head")
BN_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class HRFSpec:
    """Where HRF chains go (``targets``) and how they look; hashable, so modules can hold it.

    Targets: ``ffn`` (first FFN linear), ``ffn2`` (second), ``attn_in`` (q/k/v), ``attn_out``,
    ``conv_pointwise`` (Conformer pointwise convs), ``merge`` (SpeechFormer merge projections),
    ``head`` (every linear of the classifier head).
    """

    ratio: float = 0
    depth: int = 1
    bias: bool = True
    init: str = "variance_preserving"
    base: str = "in"
    targets: tuple[str, ...] = ("ffn",)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.targets) - set(HRF_TARGETS))
        if unknown:
            raise ValueError(f"unknown hrf_targets {unknown}; known targets are {HRF_TARGETS}")

    def dense(self, features: int, target: str, name: str, use_bias: bool = True) -> HRFDense:
        """An ``HRFDense`` that carries a chain only when ``target`` is selected."""
        return HRFDense(
            features,
            use_bias=use_bias,
            hrf_ratio=self.ratio if target in self.targets else 0,
            hrf_depth=self.depth,
            hrf_bias=self.bias,
            hrf_init=self.init,
            hrf_base=self.base,
            name=name,
        )

    def ffn(
        self, hidden: int, activation: Callable[[Array], Array], dropout: float, name: str
    ) -> FeedForward:
        """A ``FeedForward`` with this spec (``ffn``/``ffn2`` targets apply inside)."""
        return FeedForward(
            hidden,
            activation=activation,
            dropout=dropout,
            hrf_ratio=self.ratio,
            hrf_depth=self.depth,
            hrf_bias=self.bias,
            hrf_init=self.init,
            hrf_base=self.base,
            hrf_targets=self.targets,
            name=name,
        )


def sinusoidal_encoding(positions: Array, dim: int) -> Array:
    """Fixed sinusoidal encoding (Vaswani et al. 2017): positions ``(L,)`` -> ``(L, dim)``.

    Channel ``j`` uses frequency ``10000^(-2*(j//2)/dim)``, sine on even and cosine on odd
    channels; negative positions are allowed (relative encodings).
    """
    j = jnp.arange(dim)
    inv_freq = jnp.power(10000.0, -2.0 * (j // 2) / dim)
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.where(j % 2 == 0, jnp.sin(angles), jnp.cos(angles))


def zero_padding(x: Array, mask: Array) -> Array:
    """Zeros padded frames: ``x (B, T, ...)``, ``mask (B, T)``; also clears NaN/inf there."""
    return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)), x, 0)


def masked_mean(x: Array, mask: Array) -> Array:
    """Mean over real frames: ``(B, T, C), (B, T) -> (B, C)``; all-padding rows give zeros."""
    total = zero_padding(x, mask).sum(axis=1)
    count = jnp.maximum(mask.sum(axis=1, keepdims=True), 1).astype(x.dtype)
    return total / count


def lengths_after_conv(lengths: Array, kernel: int = 3, stride: int = 2) -> Array:
    """Real-frame count after a VALID conv: output ``t`` is real iff its whole receptive field is.

    ``(L - kernel) // stride + 1`` clipped at 0, so real outputs never read padded inputs.
    """
    return jnp.maximum((lengths - kernel) // stride + 1, 0)


def length_mask(lengths: Array, length: int) -> Array:
    """``(B,)`` lengths -> ``(B, length)`` bool prefix mask."""
    # an iota, not ``jnp.arange(length)[None]``: jax2onnx can export it for a symbolic length
    iota = jax.lax.broadcasted_iota(lengths.dtype, (lengths.shape[0], length), 1)
    return iota < lengths[:, None]


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the last axis whose batch statistics use real frames only.

    ``x (..., C)``, ``mask x.shape[:-1]``. Collection ``batch_stats`` holds ``mean``/``var``
    (biased, like Flax's BatchNorm); train mode uses batch statistics and updates them
    (not during ``init``), eval mode uses the running ones.
    """

    # 0.9 = PyTorch's BatchNorm default (momentum=0.1 there), as in ESPnet's Conformer;
    # Flax's 0.99 left the running statistics far from the data after a few hundred steps
    # and put a briefly trained large Conformer at chance in eval mode.
    momentum: float = 0.9
    epsilon: float = BN_EPSILON

    @nn.compact
    def __call__(self, x: Array, mask: Array, *, train: bool = False) -> Array:
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", nn.initializers.ones_init(), (c,))
        bias = self.param("bias", nn.initializers.zeros_init(), (c,))
        if train:
            axes = tuple(range(x.ndim - 1))
            m = mask[..., None]
            count = jnp.maximum(mask.sum(), 1).astype(x.dtype)
            mean = jnp.where(m, x, 0).sum(axes) / count
            var = jnp.where(m, jnp.square(x - mean), 0).sum(axes) / count
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        else:
            mean, var = ra_mean.value, ra_var.value
        return (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias


class StridedConv3x3(nn.Module):
    """3x3 stride-2 VALID ``Conv2d`` over ``(B, T, F, C)`` with ``nn.Conv``'s parameter tree.

    ``im2col=True`` (training) runs a conv with input channels as one matmul over the nine
    strided taps: on CPU 1.2x (48 channels) to 2x (144 channels) faster than XLA's
    convolution for forward + backward, same result. Inference and export keep the
    convolution: LiteRT ran the im2col graph (strided slices, concat, fully-connected)
    3x slower than its CONV_2D kernel.
    """

    features: int

    @nn.compact
    def __call__(self, x: Array, im2col: bool = False) -> Array:
        c = x.shape[-1]
        kernel = self.param("kernel", _default_kernel_init, (3, 3, c, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        if c == 1 or not im2col:  # a 1-channel conv has no matmul to win
            y = jax.lax.conv_general_dilated(x, kernel, (2, 2), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        else:
            t, f = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
            taps = [x[:, i : i + 2 * t - 1 : 2, j : j + 2 * f - 1 : 2] for i in range(3)
                    for j in range(3)]
            y = jnp.concatenate(taps, axis=-1) @ kernel.reshape(9 * c, self.features)
        return y + bias


class ConvSubsampling(nn.Module):
    """Two 3x3 stride-2 VALID Conv2d + ReLU, then a linear projection (ESPnet Conv2dSubsampling).

    ``(B, T, F), (B, T) -> (B, T', features), (B, T')`` with ``T' = ((T-1)//2 - 1)//2``.
    Padded frames are zeroed at every conv input and the mask follows the lengths, so real
    outputs never depend on padding. Masks are read as prefixes (``lengths = mask.sum(-1)``).
    """

    channels: int
    features: int

    @nn.compact
    def __call__(self, x: Array, mask: Array, *, train: bool = False) -> tuple[Array, Array]:
        lengths = mask.sum(axis=-1)
        h = x[..., None]
        for i in range(2):
            h = zero_padding(h, mask)
            h = StridedConv3x3(self.channels, name=f"conv_{i}")(h, im2col=train)
            h = nn.relu(h)
            lengths = lengths_after_conv(lengths)
            mask = length_mask(lengths, h.shape[1])
        b, t, f, c = h.shape
        h = nn.Dense(self.features, name="proj")(h.reshape(b, t, f * c))
        return h, mask


def _heads(x: Array, num_heads: int) -> Array:
    """``(B, T, d) -> (B, T, N, d/N)``."""
    b, t, d = x.shape
    if d % num_heads:
        raise ValueError(f"width {d} is not divisible by {num_heads} heads")
    return x.reshape(b, t, num_heads, d // num_heads)


class MultiHeadAttention(nn.Module):
    """Masked multi-head self-attention, global or local (``window`` frames, odd).

    q/k/v/out are ``HRFDense`` with ``(d, d)`` kernels (targets ``attn_in``/``attn_out``).
    Attention-weight dropout is left out so the fused ``jax.nn.dot_product_attention``
    applies; blocks use residual dropout instead. ``(B, T, d), (B, T) -> (B, T, d)``.
    """

    num_heads: int
    hrf: HRFSpec = HRFSpec()
    window: int | None = None

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        d = x.shape[-1]
        q, k, v = (
            _heads(self.hrf.dense(d, "attn_in", name)(x), self.num_heads)
            for name in ("query", "key", "value")
        )
        if self.window is None:
            o = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :])
        else:
            o = local_attention(q, k, v, mask, self.window)
        return self.hrf.dense(d, "attn_out", "out")(o.reshape(x.shape))


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (Dai et al. 2019).

    Scores ``(q + u) k^T + (q + v) p_{i-j}^T`` over ``sqrt(H)``, with ``p`` a projected
    sinusoidal encoding of the relative distance (ESPnet's ``RelPositionMultiHeadedAttention``).
    ``(B, T, d), (B, T) -> (B, T, d)``; the score matrix is ``T x T`` (global attention).
    """

    num_heads: int
    hrf: HRFSpec = HRFSpec()

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        b, t, d = x.shape
        q, k, v = (
            _heads(self.hrf.dense(d, "attn_in", name)(x), self.num_heads)
            for name in ("query", "key", "value")
        )
        h = d // self.num_heads
        rel = sinusoidal_encoding(jnp.arange(t - 1, -t, -1), d)  # distances T-1 .. -(T-1)
        p = nn.Dense(d, use_bias=False, name="pos")(rel).reshape(2 * t - 1, self.num_heads, h)
        init = nn.initializers.xavier_uniform()
        u = self.param("pos_bias_u", init, (self.num_heads, h))
        w = self.param("pos_bias_v", init, (self.num_heads, h))
        bd = jnp.einsum("btnh,lnh->bntl", q + w, p)
        # row of distance i - j in ``rel`` is (T-1) - (i-j): gather the (T, T) band
        i, j = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
        bd = bd[:, :, i, (t - 1) - i + j]
        o = jax.nn.dot_product_attention(
            q + u, k, v, bias=bd / jnp.sqrt(h).astype(x.dtype), mask=mask[:, None, None, :]
        )
        return self.hrf.dense(d, "attn_out", "out")(o.reshape(x.shape))


class EncoderLayer(nn.Module):
    """Transformer encoder layer, post-LN (Vaswani) or pre-LN; HRF inside the FFN branch.

    Post-LN: ``x = LN(x + drop(attn(x)))``, ``x = LN(x + drop(ffn(x)))``. Pre-LN puts the LN
    first in each branch, so the HRF layer follows it and the residual skips both.
    ``window`` makes the attention local. ``(B, T, d), (B, T) -> (B, T, d)``.
    """

    num_heads: int
    ffn_dim: int
    hrf: HRFSpec = HRFSpec()
    dropout: float = 0.1
    pre_ln: bool = False
    window: int | None = None

    @nn.compact
    def __call__(self, x: Array, mask: Array, *, train: bool = False) -> Array:
        drop = Dropout(self.dropout, deterministic=not train)
        attn = MultiHeadAttention(self.num_heads, self.hrf, self.window, name="attn")
        ffn = self.hrf.ffn(self.ffn_dim, nn.relu, self.dropout, "ffn")
        ln_attn, ln_ffn = nn.LayerNorm(name="ln_attn"), nn.LayerNorm(name="ln_ffn")
        if self.pre_ln:
            x = x + drop(attn(ln_attn(x), mask))
            return x + drop(ffn(ln_ffn(x), train=train))
        x = ln_attn(x + drop(attn(x, mask)))
        return ln_ffn(x + drop(ffn(x, train=train)))
