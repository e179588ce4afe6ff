"""Convolutional front end: two 3x3 stride-2 convs shrink time and frequency by 4.

Shared by the Conformer and the ConvTransformer (ESPnet ``Conv2dSubsampling``); masks follow
the conv lengths so real outputs never read padded inputs.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrf_jax.masking import length_mask, lengths_after_conv, zero_padding

Array = jax.Array


class StridedConv3x3(nn.Module):
    """3x3 stride-2 VALID ``Conv2d`` over ``(B, T, F, C)`` with ``nn.Conv``'s parameter tree.

    ``im2col=True`` (training) runs a conv with input channels as one matmul over the nine
    strided taps: on CPU one large matmul beats XLA's small-channel convolution, forward and
    backward, with the same result. Inference and export keep the convolution, which LiteRT
    runs with its dedicated CONV_2D kernel instead of strided slices, a concat and a matmul.
    """

    features: int

    @nn.compact
    def __call__(self, x: Array, im2col: bool = False) -> Array:
        c = x.shape[-1]
        init = nn.initializers.lecun_normal()
        kernel = self.param("kernel", init, (3, 3, c, self.features))
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
