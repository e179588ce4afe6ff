"""The HRF layer and its spec.

HRF (High-Rank Factorization, Zhang et al. 2024) widens a linear layer while it trains:
``y = ((x @ K_0 + b_0) @ K_1 + b_1) ... @ K + b`` with no nonlinearity or dropout between the
factors, so ``reparam.merge_hrf`` can collapse the chain back into one ``(K, b)`` for
deployment. An optional per-channel norm after each factor (``hrf_norm``) is affine in eval
mode and folds too, as RepVGG / OREPA fold the BatchNorms of their training-time branches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrf_jax.masking import MaskedBatchNorm

Array = jax.Array

HRF_PREFIX = "hrf_"
HRF_NORM_PREFIX = "hrf_norm_"
HRF_TARGETS = ("ffn", "ffn2", "attn_in", "attn_out", "conv_pointwise", "merge", "head")
HRF_INITS = ("variance_preserving", "orthogonal", "xavier", "function_preserving", "balanced")
HRF_NORMS = ("none", "scale", "batchnorm")
HRF_BASES = ("in", "out")


def hrf_width(in_features: int, out_features: int, ratio: float, base: str = "in") -> int:
    """Width ``r`` of the inserted layers: ``ratio * in`` (paper) or ``ratio * out``."""
    if base not in HRF_BASES:
        raise ValueError(f"hrf_base must be one of {HRF_BASES}, got {base!r}")
    width = int(round(ratio * (in_features if base == "in" else out_features)))
    if width < 1:
        raise ValueError(f"hrf ratio {ratio} with base {base!r} gives an empty layer")
    return width


def hrf_kernel_init(name: str) -> Callable[..., Array]:
    """Initialiser of the inserted HRF kernels (the factors; ``HRFDense`` inits the host).

    ``variance_preserving`` (default): LeCun normal, variance ``1/fan_in``, so each
    linear factor keeps the activation variance and the host layer (LeCun normal
    over the wider fan-in) starts with the same output scale as the plain layer.
    ``orthogonal``: (semi-)orthogonal, norm preserving. ``xavier``: Glorot uniform.
    ``function_preserving``: orthogonal too; the host then gets the plain layer's init
    projected onto the factors, so the merged chain starts as the plain layer
    (``function_preserving_host``): HRF and plain models start as the same function for a
    seed and differ only in how they learn. ``balanced`` (equal factor norms, the plain
    product variance) depends on every matrix of the chain, so ``balanced_stddevs`` builds
    it, not this function.
    """
    if name == "variance_preserving":
        return nn.initializers.lecun_normal()
    if name in ("orthogonal", "function_preserving"):
        return nn.initializers.orthogonal()
    if name == "xavier":
        return nn.initializers.xavier_uniform()
    raise ValueError(f"hrf_init {name!r} has no per-factor initialiser; choose from {HRF_INITS}")


def balanced_stddevs(d_in: int, width: int, features: int, depth: int) -> list[float]:
    """Gaussian stddevs of ``hrf_0 .. hrf_{depth-1}`` and the host for ``hrf_init="balanced"``.

    Every matrix of the chain gets the same expected squared Frobenius norm ``c``
    (``stddev_i^2 = c / size_i``), the factors being equally large at the start as they are at
    an optimum of weight decay on a product (balanced factors), and ``c`` is chosen so that an
    entry of the product has the plain layer's LeCun variance ``1 / d_in``:
    ``width^depth * prod(stddev_i^2) = 1 / d_in``.
    """
    sizes = [d_in * width] + [width * width] * (depth - 1) + [width * features]
    log_c = (sum(map(math.log, sizes)) - math.log(d_in) - depth * math.log(width)) / len(sizes)
    return [math.sqrt(math.exp(log_c) / n) for n in sizes]


def function_preserving_host(factors: Sequence[Array], key: Array, shape: tuple[int, int],
                             dtype: jnp.dtype = jnp.float32) -> Array:
    """Host kernel ``(Q_0 .. Q_last)^T K`` with ``K`` the plain layer's LeCun init from ``key``.

    With semi-orthogonal factors (``Q_0`` orthonormal rows, later ones orthogonal) the merged
    kernel ``Q_0 .. Q_last (Q_0 .. Q_last)^T K`` is ``K``: HRF and plain models start as the
    same function for the same seed (``key`` is the one the plain layer draws its kernel from).
    """
    d_in = factors[0].shape[0]
    host = nn.initializers.lecun_normal()(key, (d_in, shape[1]), jnp.float32)
    for q in factors:
        host = jnp.matmul(q.T, host, precision="highest")
    return host.astype(dtype)


class _ChannelScale(nn.Module):
    """``x * scale`` with a learned per-channel ``scale`` (init 1): ``hrf_norm="scale"``."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return x * self.param("scale", nn.initializers.ones_init(), (x.shape[-1],), jnp.float32)


class HRFDense(nn.Module):
    """``nn.Dense`` with an optional HRF chain in front of it: ``(..., d) -> (..., features)``.

    ``hrf_ratio=0`` gives exactly ``nn.Dense``'s parameter tree ``{kernel, bias}`` and init.
    ``hrf_ratio=k`` adds sub-trees ``hrf_0 .. hrf_{depth-1}`` mapping ``d -> r -> .. -> r``
    (``r = k * d``, or ``k * features`` with ``hrf_base="out"``) and the host kernel becomes
    ``(r, features)``. The HRF layers carry a bias only when the host does, so the merged
    tree always has the plain layer's structure.

    ``hrf_init``: see ``hrf_kernel_init``; ``function_preserving`` needs ``r >= d`` and
    ``balanced`` sets the host's init too (``balanced_stddevs``).

    ``hrf_norm`` puts ``hrf_norm_i`` after each ``hrf_i``: ``"scale"`` a learned per-channel
    scale, ``"batchnorm"`` a ``MaskedBatchNorm`` (running statistics under ``batch_stats``),
    the trainable per-branch normalisation with which RepVGG / DBB gain. Both fold exactly into
    ``hrf_i`` in ``merge_hrf``. BatchNorm needs the caller to pass ``train`` (and ``mask``
    ``x.shape[:-1]`` of real tokens, else every token counts): without ``train`` it raises.
    """

    features: int
    use_bias: bool = True
    hrf_ratio: float = 0
    hrf_depth: int = 1
    hrf_bias: bool = True
    hrf_init: str = "variance_preserving"
    hrf_base: str = "in"
    hrf_norm: str = "none"

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, *,
                 train: bool | None = None) -> Array:
        host_init = nn.initializers.lecun_normal()
        if self.hrf_ratio:
            x, host_init = self._chain(x, mask, train)
        # the host's own parameters, not an nn.Dense child: they must sit beside ``hrf_*``
        # so that the merged tree is exactly nn.Dense's ``{kernel, bias}``
        kernel = self.param("kernel", host_init, (x.shape[-1], self.features), jnp.float32)
        y = jnp.matmul(x, kernel)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return y

    def _chain(self, x: Array, mask: Array | None, train: bool | None
               ) -> tuple[Array, Callable[..., Array]]:
        """Applies ``hrf_0 ..`` (and their norms); returns the output and the host's init."""
        if self.hrf_depth < 1:
            raise ValueError(f"hrf_depth must be >= 1, got {self.hrf_depth}")
        if self.hrf_norm not in HRF_NORMS:
            raise ValueError(f"hrf_norm must be one of {HRF_NORMS}, got {self.hrf_norm!r}")
        if self.hrf_norm == "batchnorm":
            if train is None:
                raise ValueError(f"{self.name}: hrf_norm='batchnorm' needs the caller to pass "
                                 "train= (and mask=) to HRFDense; the backbones do so for the "
                                 "FFN targets 'ffn' and 'ffn2' only")
            if not self.use_bias:
                raise ValueError(f"{self.name}: hrf_norm='batchnorm' needs use_bias=True, the "
                                 "folded BatchNorm shift goes into the host bias")
        d_in = x.shape[-1]
        width = hrf_width(d_in, self.features, self.hrf_ratio, self.hrf_base)
        if self.hrf_init == "function_preserving":
            if width < d_in:
                raise ValueError(f"{self.name}: hrf_init='function_preserving' needs HRF width "
                                 f">= input width, got {width} < {d_in}")
            if self.hrf_norm == "batchnorm":
                raise ValueError("hrf_init='function_preserving' cannot hold with "
                                 "hrf_norm='batchnorm': batch statistics change the function")
        if self.hrf_init == "balanced":
            *stds, host_std = balanced_stddevs(d_in, width, self.features, self.hrf_depth)
            inits = [nn.initializers.normal(s) for s in stds]
            host_init = nn.initializers.normal(host_std)
        else:
            inits = [hrf_kernel_init(self.hrf_init)] * self.hrf_depth
            host_init = nn.initializers.lecun_normal()
        layers = []
        for i, init in enumerate(inits):
            layer = nn.Dense(width, use_bias=self.use_bias and self.hrf_bias, kernel_init=init,
                             name=f"{HRF_PREFIX}{i}")
            x = layer(x)
            layers.append(layer)
            if self.hrf_norm == "scale":
                x = _ChannelScale(name=f"{HRF_NORM_PREFIX}{i}")(x)
            elif self.hrf_norm == "batchnorm":
                m = jnp.ones(x.shape[:-1], bool) if mask is None else mask
                x = MaskedBatchNorm(name=f"{HRF_NORM_PREFIX}{i}")(x, m, train=train)
        if self.hrf_init == "function_preserving":
            # runs only at init, after the factors exist; the key is the plain layer's
            def host_init(key: Array, shape: tuple[int, int], dtype=jnp.float32) -> Array:
                factors = [layer.variables["params"]["kernel"] for layer in layers]
                return function_preserving_host(factors, key, shape, dtype)
        return x, host_init


@dataclasses.dataclass(frozen=True)
class HRFSpec:
    """Where HRF chains go (``targets``) and how they look; hashable, so modules can hold it.

    Targets: ``ffn`` (first FFN linear), ``ffn2`` (second), ``attn_in`` (q/k/v), ``attn_out``,
    ``conv_pointwise`` (Conformer pointwise convs), ``merge`` (SpeechFormer merge projections),
    ``head`` (every linear of the classifier head). ``init`` and ``norm``: ``HRFDense``'s
    ``hrf_init`` and ``hrf_norm``.
    """

    ratio: float = 0
    depth: int = 1
    bias: bool = True
    init: str = "variance_preserving"
    base: str = "in"
    targets: tuple[str, ...] = ("ffn",)
    norm: str = "none"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.targets) - set(HRF_TARGETS))
        if unknown:
            raise ValueError(f"unknown hrf_targets {unknown}; known targets are {HRF_TARGETS}")
        if self.init not in HRF_INITS:
            raise ValueError(f"hrf_init must be one of {HRF_INITS}, got {self.init!r}")
        if self.norm not in HRF_NORMS:
            raise ValueError(f"hrf_norm must be one of {HRF_NORMS}, got {self.norm!r}")

    def dense(self, features: int, target: str, name: str, use_bias: bool = True) -> HRFDense:
        """An ``HRFDense`` named ``name`` that carries a chain only when ``target`` is selected."""
        return HRFDense(
            features,
            use_bias=use_bias,
            hrf_ratio=self.ratio if target in self.targets else 0,
            hrf_depth=self.depth,
            hrf_bias=self.bias,
            hrf_init=self.init,
            hrf_base=self.base,
            hrf_norm=self.norm,
            name=name,
        )
