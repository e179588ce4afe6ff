"""fairseq ConvTransformer encoder weights -> ``hrf_jax`` ConvTransformer (reference preset).

Reads the ``state_dict`` of fairseq's ``models/speech_to_text/convtransformer.py``
``ConvTransformerEncoder`` (``conv.0``/``conv.2``, ``out``, ``transformer_layers.<i>``). fairseq
trains it under a decoder; ours is a linear layer on the masked time-mean of the encoder output,
given as ``head`` or freshly initialised.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from hrf_jax.convert.espnet import (
    Head,
    as_jax,
    block_count,
    classifier,
    conv3x3,
    layer_norm,
    linear,
)
from hrf_jax.convert.state_dict import StateDict
from hrf_jax.hrf import HRFSpec
from hrf_jax.models import convtransformer

# fixed sinusoids: absent from current state_dicts, stored by old fairseq versions
_POSITION_BUFFERS = ("embed_positions._float_tensor", "embed_positions.weights")


def _layer(sd: StateDict, p: str, d: int, ffn: int) -> dict:
    attn = {name: linear(sd, f"{p}.self_attn.{src}_proj", d, d)
            for name, src in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "out"))}
    return {
        "attn": attn,
        "ln_attn": layer_norm(sd, f"{p}.self_attn_layer_norm", d),
        "ffn": {"fc1": linear(sd, f"{p}.fc1", d, ffn), "fc2": linear(sd, f"{p}.fc2", ffn, d)},
        "ln_ffn": layer_norm(sd, f"{p}.final_layer_norm", d),
    }


def from_fairseq_convtransformer(
    state_dict: Mapping[str, Any] | str | os.PathLike,
    num_heads: int,
    head: Head | None = None,
    num_classes: int | None = None,
    *,
    prefix: str = "",
    seed: int = 0,
) -> tuple[convtransformer.ConvTransformer, dict]:
    """``(model, variables)``: fairseq's ``ConvTransformerEncoder`` weights in the reference
    preset of ``hrf_jax.models.convtransformer``.

    ``state_dict``: the encoder's parameter names to arrays, or a checkpoint path; ``prefix``
    is stripped first (``"encoder."`` for a whole ``ConvTransformerModel``, whose decoder is
    then ignored). ``num_heads`` (``--encoder-attention-heads``) is not stored in the weights,
    so it is given. Width, depth, FFN width and conv channels come from shapes; a pre-LN
    encoder (``--encoder-normalize-before``) shows by its ``layer_norm``, which fairseq builds
    but never applies, so it is read and dropped. Stored positional sinusoids are dropped too
    (they are fixed). The model takes the fairseq input width ``F`` with
    ``ceil(F/4) * conv_out_channels`` equal to ``out``'s input width.

    ``head = (weight (C, d), bias (C,))``: the linear classifier on the masked time-mean of
    the encoder output, as PyTorch stores a ``Linear``; ``None``: a fresh classifier with
    ``num_classes`` outputs (LeCun-normal kernel drawn from ``seed``, zero bias).
    ``model.apply(variables, feats, mask)`` then gives, in eval mode, fairseq's encoder output
    on each utterance alone (real frames ``ceil(L/4)``; fairseq's batched lengths can differ
    by rounding its subsampling factor) -> masked mean -> head. ``ValueError`` names any
    missing, misshapen or unknown parameter.
    """
    sd = StateDict(state_dict, "fairseq ConvTransformer", prefix)
    d, flat = sd.shape("out.weight")
    channels = sd.shape("conv.0.weight")[0]
    if flat % channels:
        raise ValueError(f"out.weight's input width {flat} is not a multiple of the "
                         f"{channels} conv channels")
    if d % num_heads:
        raise ValueError(f"encoder_embed_dim {d} is not divisible by num_heads={num_heads}")
    layers = block_count(sd, "transformer_layers.")
    ffn = sd.shape("transformer_layers.0.fc1.weight")[0]
    pre_ln = sd.has("layer_norm.weight")
    cfg = dataclasses.replace(
        convtransformer.ConvTransformerConfig(
            d_model=d, num_layers=layers, num_heads=num_heads, ffn_dim=ffn,
            subsampling_channels=None if channels == d else channels, pre_ln=pre_ln,
        ),
        **convtransformer.REFERENCE,
    )
    params: dict[str, Any] = {"subsampling": {
        "conv_0": conv3x3(sd, "conv.0", 1, channels),
        "conv_1": conv3x3(sd, "conv.2", channels, channels),
        "proj": linear(sd, "out", flat, d),
    }}
    for i in range(layers):
        params[f"layer_{i}"] = _layer(sd, f"transformer_layers.{i}", d, ffn)
    if pre_ln:
        layer_norm(sd, "layer_norm", d)  # built by fairseq, never applied
    for name in _POSITION_BUFFERS:
        if sd.has(name):
            sd.take(name)
    params["classifier"] = classifier(head, num_classes, d, seed)
    sd.finish()
    model = convtransformer.ConvTransformer(cfg, params["classifier"]["bias"].shape[0], HRFSpec())
    return model, as_jax({"params": params})
