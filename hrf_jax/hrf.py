"""The HRF layer and its spec.

HRF (High-Rank Factorization, Zhang et al. 2024) widens a linear layer while it trains:
``y = ((x @ K_0 + b_0) @ K_1 + b_1) ... @ K + b`` with no nonlinearity, normalisation or
dropout between the factors, so ``reparam.merge_hrf`` can collapse the chain back into one
``(K, b)`` for deployment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

HRF_PREFIX = "hrf_"
HRF_TARGETS = ("ffn", "ffn2", "attn_in", "attn_out", "conv_pointwise", "merge", "head")
HRF_INITS = ("variance_preserving", "orthogonal", "xavier")
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
    """``nn.Dense`` with an optional HRF chain in front of it: ``(..., d) -> (..., features)``.

    ``hrf_ratio=0`` gives exactly ``nn.Dense``'s parameter tree ``{kernel, bias}`` and init.
    ``hrf_ratio=k`` adds sub-trees ``hrf_0 .. hrf_{depth-1}`` mapping ``d -> r -> .. -> r``
    (``r = k * d``, or ``k * features`` with ``hrf_base="out"``) and the host kernel becomes
    ``(r, features)``. The HRF layers carry a bias only when the host does, so the merged
    tree always has the plain layer's structure.
    """

    features: int
    use_bias: bool = True
    hrf_ratio: float = 0
    hrf_depth: int = 1
    hrf_bias: bool = True
    hrf_init: str = "variance_preserving"
    hrf_base: str = "in"

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
                    name=f"{HRF_PREFIX}{i}",
                )(x)
        # the host's own parameters, not an nn.Dense child: they must sit beside ``hrf_*``
        # so that the merged tree is exactly nn.Dense's ``{kernel, bias}``
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features), jnp.float32
        )
        y = jnp.matmul(x, kernel)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return y


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
        """An ``HRFDense`` named ``name`` that carries a chain only when ``target`` is selected."""
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
