"""Convolutional front end: two 3x3 stride-2 convs shrink time and frequency by 4.

Shared by the Conformer (ESPnet ``Conv2dSubsampling``) and the ConvTransformer (fairseq's conv
front end, which pads each conv by one); masks follow the conv lengths so real outputs never
depend on padding.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from hrf_jax.conv_ops import use_convolution_ops
from hrf_jax.masking import length_mask, lengths_after_conv, zero_padding

Array = jax.Array

# subsampling padding -> zeros added on each side of time and frequency before each conv
PADDINGS = {"valid": 0, "same": 1}
FLATTENS = ("freq_channel", "channel_freq")
FORMS = ("conv", "im2col", "taps")
SAVED_IN_CHUNKS = "subsampling_conv_1"  # what a training chunk's backward pass keeps
CHUNK_REMAT_POLICY = jax.checkpoint_policies.save_only_these_names(SAVED_IN_CHUNKS)


class StridedConv3x3(nn.Module):
    """3x3 stride-2 ``Conv2d`` over ``(B, T, F, C)`` with ``nn.Conv``'s parameter tree.

    ``padding`` zeros on each side of time and frequency (0: VALID; 1: PyTorch's
    ``padding=1``, ``ceil(T/2)`` outputs). ``form`` is how it is traced, the same function
    each time (``FORMS``):

    - ``"conv"`` (the default): one convolution op, for export and where it measured fastest;
    - ``"im2col"``: one matmul over the nine strided taps: in a training step on CPU
      (forward and backward) one large matmul beats XLA's small-channel convolution, whose
      gradients are slow (the one-channel first conv too: a nine-deep matmul, about 5 ms off
      a Conformer light step at T=160, BENCHMARKS.md);
    - ``"taps"`` (one input channel only): the nine strided taps times their kernel rows,
      summed, which XLA fuses into one elementwise pass; in inference it beat both for the
      front end's first conv (one utterance at T=651: 0.32 ms against 0.57-1.5 ms), while
      its kernel gradient (nine reductions over the output) lost in training (3.2 against
      1.7 ms for two utterances at T=160).
    """

    features: int
    padding: int = 0

    @nn.compact
    def __call__(self, x: Array, form: str = "conv") -> Array:
        c = x.shape[-1]
        init = nn.initializers.lecun_normal()
        kernel = self.param("kernel", init, (3, 3, c, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        p = self.padding
        if form not in FORMS or form == "taps" and c != 1:
            raise ValueError(f"conv form must be one of {FORMS} ('taps' for one input channel), "
                             f"got {form!r} for {c} channels")
        if form == "conv":
            y = jax.lax.conv_general_dilated(x, kernel, (2, 2), ((p, p), (p, p)),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return y + bias
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        t, f = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
        taps = [x[:, i : i + 2 * t - 1 : 2, j : j + 2 * f - 1 : 2] for i in range(3)
                for j in range(3)]
        if form == "taps":  # (B, t, f, 1) * (features,) per tap
            return sum(tap * kernel[i // 3, i % 3, 0] for i, tap in enumerate(taps)) + bias
        return jnp.concatenate(taps, axis=-1) @ kernel.reshape(9 * c, self.features) + bias


class ConvSubsampling(nn.Module):
    """Two 3x3 stride-2 Conv2d + ReLU, then a linear projection (ESPnet Conv2dSubsampling).

    ``(B, T, F), (B, T) -> (B, T', features), (B, T')``. ``padding="valid"`` (ESPnet):
    ``T' = ((T-1)//2 - 1)//2``; ``"same"`` (fairseq ``convtransformer``: one zero on each side,
    as PyTorch's ``padding=1``, not XLA's end-only SAME): ``T' = ceil(T/4)``, and frequency
    likewise. ``flatten`` orders the ``(F', C)`` features of a frame for the projection:
    ``"freq_channel"`` (channels fastest) or ``"channel_freq"`` (frequency fastest, ESPnet and
    fairseq's order, so their projection weights load unpermuted).

    Padded frames are zeroed at every conv input and the mask follows the lengths (a padded
    conv's border zeros are then exactly the zeros an unpadded utterance sees), so real outputs
    never depend on padding. Masks are read as prefixes (``lengths = mask.sum(-1)``).

    The convs are im2col matmuls while training (``train=True``). In inference they are
    im2col matmuls too with ``inference_im2col``; else the one-channel first conv is nine
    fused multiply-adds (``"taps"``) and the second a convolution op. Which is faster depends
    on the shapes, so each model sets it from a measurement (BENCHMARKS.md, "One
    utterance"). Under ``hrf_jax.conv_ops.convolution_ops()`` (export) both are convolution
    ops.

    ``train_chunk_bytes``: while training on CPU the batch runs through the front end in
    chunks (whole utterances, a divisor of the batch) whose first-conv output takes at most
    this many bytes, one chunk after another (``nn.scan`` of ``nn.remat``): the backward pass
    keeps each chunk's second-conv output and recomputes the rest. The front end's tensors
    are the largest of a light model's step (a first-conv output and the second conv's
    patches of tens of MB at batch 32), and on a CPU their passes run at memory speed; a
    chunk's tensors fit in cache (BENCHMARKS.md, "Chunked front end"). Where one utterance
    alone exceeds the budget (the large models' 144-256 channels), chunks would not fit and
    measured slower, so the batch runs at once. The function and its gradients are the
    unchunked ones up to float rounding; ``0`` turns chunking off. Accelerators never chunk:
    chunks would serialise work a GPU runs in parallel (not measured there).
    """

    channels: int
    features: int
    padding: str = "valid"
    flatten: str = "freq_channel"
    inference_im2col: bool = True
    train_chunk_bytes: int = 2 * 2**20

    def __call__(self, x: Array, mask: Array, *, train: bool = False
                 ) -> tuple[Array, Array]:
        if self.padding not in PADDINGS:
            raise ValueError(f"subsampling padding must be one of {sorted(PADDINGS)}, "
                             f"got {self.padding!r}")
        if self.flatten not in FLATTENS:
            raise ValueError(f"subsampling flatten must be one of {FLATTENS}, "
                             f"got {self.flatten!r}")
        forms = self.conv_forms(train)
        if not train or self.is_initializing():  # (export traces a symbolic time axis)
            return self.front_end(x, mask, forms)
        p = PADDINGS[self.padding]
        t, f = ((n + 2 * p - 3) // 2 + 1 for n in x.shape[1:3])
        per_chunk = chunk_size(x.shape[0], t * f * self.channels * x.dtype.itemsize,
                               self.train_chunk_bytes)
        if per_chunk == x.shape[0]:
            return self.front_end(x, mask, forms)

        def body(module: ConvSubsampling, carry: None, chunk: tuple[Array, Array]
                 ) -> tuple[None, tuple[Array, Array]]:
            return carry, module.front_end(*chunk, forms, in_chunk=True)

        # the backward pass keeps each chunk's second-conv output and recomputes the rest: the
        # first conv (few FLOPs, the largest output), patches, ReLUs, masks (BENCHMARKS.md, "What
        # a chunk's backward pass keeps")
        scan = nn.scan(nn.remat(body, prevent_cse=False, policy=CHUNK_REMAT_POLICY),
                       variable_broadcast="params", split_rngs={"params": False})
        b, n = x.shape[0], x.shape[0] // per_chunk
        chunks = (x.reshape(n, per_chunk, *x.shape[1:]), mask.reshape(n, per_chunk, -1))
        _, (h, out_mask) = scan(self, None, chunks)
        return h.reshape(b, *h.shape[2:]), out_mask.reshape(b, -1)

    def conv_forms(self, train: bool) -> tuple[str, str]:
        """How the two convs are traced (``StridedConv3x3``'s ``form``)."""
        if use_convolution_ops():
            return "conv", "conv"
        if train or self.inference_im2col:
            return "im2col", "im2col"
        # taps only before a convolution op: XLA fuses them into each of an im2col's nine
        # slices, evaluating the first conv nine times (no faster for the Conformer, 1.3x
        # its counted FLOPs)
        return "taps", "conv"

    @nn.compact
    def front_end(self, x: Array, mask: Array, forms: tuple[str, str], *,
                  in_chunk: bool = False) -> tuple[Array, Array]:
        """The convs (traced as ``forms``) and the projection over ``x`` as one batch;
        ``in_chunk`` names the second conv's output for a training chunk's backward pass."""
        p = PADDINGS[self.padding]
        lengths = mask.sum(axis=-1)
        h = x[..., None]
        for i in range(2):
            h = zero_padding(h, mask)
            h = StridedConv3x3(self.channels, p, name=f"conv_{i}")(h, forms[i])
            if in_chunk and i == 1:
                h = checkpoint_name(h, SAVED_IN_CHUNKS)
            h = nn.relu(h)
            # a conv padded by p is a VALID conv of the utterance padded to L + 2p
            lengths = lengths_after_conv(lengths + 2 * p)
            mask = length_mask(lengths, h.shape[1])
        if self.flatten == "channel_freq":
            h = h.transpose(0, 1, 3, 2)
        b, t = h.shape[:2]
        h = nn.Dense(self.features, name="proj")(h.reshape(b, t, h.shape[2] * h.shape[3]))
        return h, mask


def chunk_size(batch: int, utterance_bytes: int, chunk_bytes: int) -> int:
    """Utterances per front-end chunk while training: the largest divisor of ``batch`` whose
    utterances' first-conv outputs (``utterance_bytes`` each) fit in ``chunk_bytes``;
    ``batch`` (no chunks) where one utterance does not fit, for ``chunk_bytes=0`` and off
    CPU."""
    fits = chunk_bytes // max(utterance_bytes, 1)
    if fits < 1 or jax.default_backend() != "cpu":
        return batch
    return max(d for d in range(1, min(fits, batch) + 1) if batch % d == 0)
