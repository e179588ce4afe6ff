"""ESPnet Conformer encoder weights -> ``hrf_jax`` Conformer (reference preset).

Reads the ``state_dict`` of ESPnet's ``espnet/nets/pytorch_backend/conformer/encoder.py``
``Encoder`` built with ``input_layer="conv2d"``, ``normalize_before=True``, macaron FFNs and the
convolution module (the Conformer of Gulati et al.), with ``rel_pos``/``rel_selfattn`` (latest)
or ``abs_pos``/``selfattn``. ESPnet's encoder has no classifier: ours is a linear layer on the
time-mean of the encoder output, given as ``head`` or freshly initialised.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hrf_jax.convert.state_dict import StateDict
from hrf_jax.hrf import HRFSpec
from hrf_jax.models import conformer

Head = tuple[Any, Any]

# the helpers below read PyTorch layouts; the fairseq converter shares them


def linear(sd: StateDict, name: str, n_in: int, n_out: int, bias: bool = True) -> dict:
    """A PyTorch ``Linear`` (``weight (out, in)``) as Flax's ``{kernel (in, out), bias}``."""
    out = {"kernel": sd.take(f"{name}.weight", (n_out, n_in)).T}
    if bias:
        out["bias"] = sd.take(f"{name}.bias", (n_out,))
    return out


def conv3x3(sd: StateDict, name: str, c_in: int, c_out: int) -> dict:
    """A ``Conv2d(c_in, c_out, 3)`` over ``(B, C, T, F)`` as a ``StridedConv3x3`` (HWIO)."""
    kernel = sd.take(f"{name}.weight", (c_out, c_in, 3, 3)).transpose(2, 3, 1, 0)
    return {"kernel": kernel, "bias": sd.take(f"{name}.bias", (c_out,))}


def layer_norm(sd: StateDict, name: str, d: int) -> dict:
    return {"scale": sd.take(f"{name}.weight", (d,)), "bias": sd.take(f"{name}.bias", (d,))}


def classifier(head: Head | None, num_classes: int | None, d: int, seed: int) -> dict:
    """The linear head from ``head = (weight (C, d), bias (C,))`` or, without it, a fresh one
    (``HRFDense``'s init: LeCun-normal kernel from ``seed``, zero bias)."""
    if head is None:
        if num_classes is None:
            raise ValueError("give the classifier as head=(weight, bias) or its num_classes")
        kernel = nn.initializers.lecun_normal()(jax.random.PRNGKey(seed), (d, num_classes))
        return {"kernel": np.asarray(kernel), "bias": np.zeros((num_classes,), np.float32)}
    sd = StateDict(dict(zip(("weight", "bias"), head, strict=True)), "classifier head")
    n = num_classes or sd.shape("weight")[0]
    return {"kernel": sd.take("weight", (n, d)).T, "bias": sd.take("bias", (n,))}


def block_count(sd: StateDict, prefix: str) -> int:
    """How many ``{prefix}{i}.`` blocks the state_dict holds (numbered from 0, no gaps)."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    found = {int(m.group(1)) for n in sd.names(prefix) if (m := pattern.match(n))}
    if found != set(range(len(found))) or not found:
        raise ValueError(f"{sd.what} state_dict has blocks {sorted(found)} under {prefix!r}, "
                         "expected 0..n-1")
    return len(found)


def as_jax(tree: Mapping) -> dict:
    return jax.tree_util.tree_map(jnp.asarray, dict(tree))


def _block(sd: StateDict, p: str, d: int, ffn: int, kernel: int, heads: int,
           rel: bool) -> tuple[dict, dict]:
    attn = {name: linear(sd, f"{p}.self_attn.linear_{src}", d, d)
            for name, src in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "out"))}
    if rel:
        attn["pos"] = linear(sd, f"{p}.self_attn.linear_pos", d, d, bias=False)
        for name in ("pos_bias_u", "pos_bias_v"):
            attn[name] = sd.take(f"{p}.self_attn.{name}", (heads, d // heads))
    cm = f"{p}.conv_module"
    conv = {
        "ln": layer_norm(sd, f"{p}.norm_conv", d),
        "pointwise_1": {"kernel": sd.take(f"{cm}.pointwise_conv1.weight", (2 * d, d, 1))[..., 0].T,
                        "bias": sd.take(f"{cm}.pointwise_conv1.bias", (2 * d,))},
        # Conv1d (out, in/groups, k) -> Flax (k, in/groups, out)
        "depthwise": {"kernel": sd.take(f"{cm}.depthwise_conv.weight", (d, 1, kernel)).T,
                      "bias": sd.take(f"{cm}.depthwise_conv.bias", (d,))},
        "batch_norm": layer_norm(sd, f"{cm}.norm", d),
        "pointwise_2": {"kernel": sd.take(f"{cm}.pointwise_conv2.weight", (d, d, 1))[..., 0].T,
                        "bias": sd.take(f"{cm}.pointwise_conv2.bias", (d,))},
    }
    stats = {"mean": sd.take(f"{cm}.norm.running_mean", (d,)),
             "var": sd.take(f"{cm}.norm.running_var", (d,))}

    def ffn_params(name: str) -> dict:
        return {"fc1": linear(sd, f"{p}.{name}.w_1", d, ffn),
                "fc2": linear(sd, f"{p}.{name}.w_2", ffn, d)}

    params = {
        "ln_ffn1": layer_norm(sd, f"{p}.norm_ff_macaron", d),
        "ffn1": ffn_params("feed_forward_macaron"),
        "ln_attn": layer_norm(sd, f"{p}.norm_mha", d),
        "attn": attn,
        "conv": conv,
        "ln_ffn2": layer_norm(sd, f"{p}.norm_ff", d),
        "ffn2": ffn_params("feed_forward"),
        "ln_out": layer_norm(sd, f"{p}.norm_final", d),
    }
    return params, {"conv": {"batch_norm": stats}}


def from_espnet_conformer(
    state_dict: Mapping[str, Any] | str | os.PathLike,
    num_heads: int,
    head: Head | None = None,
    num_classes: int | None = None,
    *,
    prefix: str = "",
    seed: int = 0,
) -> tuple[conformer.Conformer, dict]:
    """``(model, variables)``: ESPnet's Conformer ``Encoder`` weights in the reference preset.

    ``state_dict``: the encoder's parameter names (``embed.conv.0.weight``, ``encoders.0...``,
    ``after_norm.weight``) to arrays, or a checkpoint path; ``prefix`` is stripped first
    (``"encoder."`` for a whole ESPnet ASR model, whose other parts are then ignored).
    ``num_heads`` is not stored in the weights, so it is given. Width, depth, FFN width,
    conv-module kernel, subsampling channels and the attention type (relative when
    ``pos_bias_u``/``linear_pos`` are present, else absolute) come from names and shapes;
    BatchNorm running statistics go to ``batch_stats``.

    ``head = (weight (C, d), bias (C,))``: the linear classifier on the time-mean of the
    encoder output, as PyTorch stores a ``Linear``; ``None``: a fresh classifier with
    ``num_classes`` outputs (LeCun-normal kernel drawn from ``seed``, zero bias) to fine-tune.
    ``model.apply(variables, feats, mask)`` then gives ESPnet's encoder -> mean -> head in
    eval mode. ``ValueError`` names any missing, misshapen or unknown parameter.
    """
    sd = StateDict(state_dict, "ESPnet Conformer", prefix)
    d, flat = sd.shape("embed.out.0.weight")
    channels = sd.shape("embed.conv.0.weight")[0]
    if flat % channels:
        raise ValueError(f"embed.out.0.weight's input width {flat} is not a multiple of the "
                         f"{channels} subsampling channels")
    if d % num_heads:
        raise ValueError(f"attention_dim {d} is not divisible by num_heads={num_heads}")
    layers = block_count(sd, "encoders.")
    ffn = sd.shape("encoders.0.feed_forward.w_1.weight")[0]
    kernel = sd.shape("encoders.0.conv_module.depthwise_conv.weight")[-1]
    rel = sd.has("encoders.0.self_attn.pos_bias_u") or sd.has(
        "encoders.0.self_attn.linear_pos.weight")
    expansion, rest = divmod(ffn, d)
    cfg = dataclasses.replace(
        conformer.ConformerConfig(
            d_model=d, num_layers=layers, num_heads=num_heads, kernel_size=kernel,
            ffn_expansion=expansion if not rest else 4, ffn_units=ffn if rest else None,
            subsampling_channels=None if channels == d else channels,
            pos_enc="rel" if rel else "abs",
        ),
        **conformer.REFERENCE,
    )
    params: dict[str, Any] = {"subsampling": {
        "conv_0": conv3x3(sd, "embed.conv.0", 1, channels),
        "conv_1": conv3x3(sd, "embed.conv.2", channels, channels),
        "proj": linear(sd, "embed.out.0", flat, d),
    }}
    stats = {}
    for i in range(layers):
        params[f"block_{i}"], stats[f"block_{i}"] = _block(
            sd, f"encoders.{i}", d, ffn, kernel, num_heads, rel)
    params["ln_final"] = layer_norm(sd, "after_norm", d)
    params["classifier"] = classifier(head, num_classes, d, seed)
    sd.finish()
    model = conformer.Conformer(cfg, params["classifier"]["bias"].shape[0], HRFSpec())
    return model, as_jax({"params": params, "batch_stats": stats})
