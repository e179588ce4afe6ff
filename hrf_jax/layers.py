"""Shared Flax Linen blocks; the HRF-capable linear layer lives here.

HRF (High-Rank Factorization, Zhang et al. 2024) widens a linear layer while it
trains: ``y = ((x @ K_0 + b_0) @ K_1 + b_1) ... @ K + b`` with no nonlinearity,
normalisation or dropout between the factors, so ``merge_hrf`` can collapse the
chain back into one ``(K, b)`` for deployment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return self._dense(out, "fc2", "ffn2")(h)
