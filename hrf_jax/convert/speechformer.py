"""The official SpeechFormer (github.com/HappyColor/SpeechFormer, ``model/speechformer.py``) to
``hrf_jax``'s SpeechFormer with the reference preset.

Official names, per stage ``s`` (blocks at ``layers.{2s}``, merges at ``layers.{2s+1}``):
``input_norm``, ``layers.{i}.attention.project_qkv`` (one fused ``(3C, C)`` projection, split
into query/key/value), ``attention.project_out``, ``attention_layer_norm``, ``fc1``, ``fc2``,
``final_layer_norm``; ``layers.0.position`` (the frozen stage-1 table); merge ``fc`` and
``norm``; the head ``classifier.{0,3,6}``. torch ``(out, in)`` weights become ``(in, out)``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hrf_jax.convert.state_dict import StateDict
from hrf_jax.models.registry import get_config
from hrf_jax.models.speechformer import PE_COLLECTION, PE_NAME, SpeechFormer

WHAT = "official SpeechFormer"


def _linear(sd: StateDict, name: str, fan_in: int, fan_out: int) -> dict[str, np.ndarray]:
    return {"kernel": sd.take(f"{name}.weight", (fan_out, fan_in)).T,
            "bias": sd.take(f"{name}.bias", (fan_out,))}


def _norm(sd: StateDict, name: str, width: int) -> dict[str, np.ndarray]:
    return {"scale": sd.take(f"{name}.weight", (width,)),
            "bias": sd.take(f"{name}.bias", (width,))}


def _layer(sd: StateDict, name: str, width: int, ffn: int) -> dict[str, Any]:
    qkv = _linear(sd, f"{name}.attention.project_qkv", width, 3 * width)
    thirds = {part: {"kernel": qkv["kernel"][:, i * width:(i + 1) * width],
                     "bias": qkv["bias"][i * width:(i + 1) * width]}
              for i, part in enumerate(("query", "key", "value"))}
    return {
        "attn": {**thirds, "out": _linear(sd, f"{name}.attention.project_out", width, width)},
        "ln_attn": _norm(sd, f"{name}.attention_layer_norm", width),
        "ffn": {"fc1": _linear(sd, f"{name}.fc1", width, ffn),
                "fc2": _linear(sd, f"{name}.fc2", ffn, width)},
        "ln_ffn": _norm(sd, f"{name}.final_layer_norm", width),
    }


def _layer_count(sd: StateDict, block: str) -> int:
    found = {int(m.group(1)) for n in sd.names(f"{block}.layers.")
             if (m := re.match(rf"{re.escape(block)}\.layers\.(\d+)\.", n))}
    return max(found, default=-1) + 1


def from_speechformer_official(
    state_dict: Mapping[str, Any] | str | os.PathLike,
    num_classes: int | None = None,
    *,
    num_heads: int = 8,
    hop: float = 0.01,
    prefix: str = "",
) -> tuple[SpeechFormer, dict[str, Any]]:
    """``(model, variables)`` reproducing an official SpeechFormer's eval-mode logits.

    ``state_dict``: the official model's ``state_dict`` (names to arrays) or a checkpoint
    path (see ``StateDict``); ``prefix`` is stripped from its names. The input width,
    FFN width, layers per stage, ``expand``, the number of classes and the PE table's rows
    come from names and shapes; ``num_heads`` (not visible in shapes; the official default
    8) and ``hop`` (seconds, the official default 0.01) must match the official model's.
    ``num_classes`` given must match the classifier. The model is
    ``build_model("speechformer", reference=True)`` with those sizes; feed it the official
    model's input features (every frame real, or padded with ``mask``).

    Raises ``ValueError`` naming the parameter for a name the converter does not know, a
    missing one, or a shape that does not fit.
    """
    sd = StateDict(state_dict, WHAT, prefix)
    reference = get_config("speechformer", "large", reference=True)
    stages = len(reference.num_layers)
    width = sd.shape("layers.0.input_norm.weight")[0]
    if width % num_heads:
        raise ValueError(f"{WHAT} parameter 'layers.0.input_norm.weight' gives width {width}, "
                         f"not divisible by num_heads={num_heads}")
    fc1 = next((f"layers.{2 * s}.layers.0.fc1.weight" for s in range(stages)
                if sd.has(f"layers.{2 * s}.layers.0.fc1.weight")), "layers.0.layers.0.fc1.weight")
    ffn = sd.shape(fc1)[0] * width // sd.shape(fc1)[1]  # the FFN width at the input width
    pe_rows = sd.shape("layers.0.position")[0]
    num_layers = tuple(_layer_count(sd, f"layers.{2 * s}") for s in range(stages))
    params: dict[str, Any] = {}
    batch_stats = {PE_NAME: sd.take("layers.0.position", (pe_rows, width))}
    expand = []
    d = width
    for s in range(stages):
        block = f"layers.{2 * s}"
        stage_ffn = ffn * d // width
        params[f"stage_{s}_ln_in"] = _norm(sd, f"{block}.input_norm", d)
        for i in range(num_layers[s]):
            params[f"stage_{s}_layer_{i}"] = _layer(sd, f"{block}.layers.{i}", d, stage_ffn)
        if s < stages - 1:
            merge = f"layers.{2 * s + 1}"
            out = sd.shape(f"{merge}.fc.weight")[0]
            if out % d:
                raise ValueError(f"{WHAT} parameter '{merge}.fc.weight' maps width {d} to "
                                 f"{out}, not a multiple")
            expand.append(out // d)
            params[f"merge_{s}"] = _linear(sd, f"{merge}.fc", d, out)
            params[f"merge_{s}_ln"] = _norm(sd, f"{merge}.norm", out)
            d = out
    classes = sd.shape("classifier.6.weight")[0] if num_classes is None else num_classes
    for i, (name, fan_in, fan_out) in enumerate(
            (("classifier.0", d, d // 2), ("classifier.3", d // 2, d // 4),
             ("classifier.6", d // 4, classes))):
        params["classifier" if i == 2 else f"head_{i}"] = _linear(sd, name, fan_in, fan_out)
    sd.finish()

    cfg = dataclasses.replace(
        reference, num_layers=num_layers, num_heads=num_heads, ffn_ratio=ffn / width,
        expand=tuple(expand), hop_ms=hop * 1000, pe_max_len=pe_rows,
    )
    model = SpeechFormer(cfg, classes)
    variables = {"params": params, PE_COLLECTION: batch_stats}
    return model, jax.tree_util.tree_map(jnp.asarray, variables)
