"""How the convolutions of the Conformer and ConvTransformer are traced.

By default they take the forms XLA runs fastest on CPU: while training the strided subsampling
convs are one im2col matmul each (XLA's convolution gradients are slow there), in inference
im2col for the Conformer and convolution ops for the ConvTransformer (each measured,
``ConvSubsampling.inference_im2col``); the Conformer's depthwise conv is a banded matmul or
shifted sums in both (one utterance at T=651: 7.0 -> 4.5 ms for Conformer light with both
matmul forms). Export traces under ``convolution_ops()``, which keeps one convolution op each:
LiteRT and ONNX Runtime have dedicated CONV_2D / DEPTHWISE_CONV_2D kernels that beat the
matmul forms there. Both forms compute the same function with the same parameters
(tests/test_fast_paths.py).

The choice is made when a function is traced: a ``jax.jit`` function traced outside the
context keeps its form when later called inside it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_CONVOLUTION_OPS = contextvars.ContextVar("hrf_jax_convolution_ops", default=False)


@contextlib.contextmanager
def convolution_ops() -> Iterator[None]:
    """Within this context, models trace their convolutions as convolution ops."""
    token = _CONVOLUTION_OPS.set(True)
    try:
        yield
    finally:
        _CONVOLUTION_OPS.reset(token)


def use_convolution_ops() -> bool:
    """True inside ``convolution_ops()``."""
    return _CONVOLUTION_OPS.get()
