"""PyTorch-style parameter draws for the reference presets (``init="official"`` of
SpeechFormer, ``"espnet"``, ``"fairseq"``).

The layers here draw with flax initialisers (LeCun-normal kernels, zero biases). A reference
preset instead replaces those draws at init, child module by child module
(``drawn_at_init``), with what its reference code draws: PyTorch's ``nn.Linear``/``nn.Conv*``
default, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights (``kaiming_uniform(a=sqrt(5))``)
and biases, or, where a rule says so, xavier-uniform kernels. The parameter tree and every
other draw stay as they are: LayerNorm/BatchNorm ones and zeros are PyTorch's too, and
ESPnet's xavier-uniform ``pos_bias_u/v`` is flax's ``xavier_uniform`` on the same shape.

HRF layers (a ``kernel`` beside ``hrf_0 ..``) keep their chains as ``hrf_init`` drew them.
Their host kernel follows ``hrf_init``'s meaning of the host: ``function_preserving`` gets
the reference-drawn plain kernel projected onto the factors (the merged chain starts as the
reference's layer), ``balanced`` keeps its own draw, the others get the rule's draw over
the host's fans. The bias is drawn over the plain layer's fan-in, as the merged layer's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrf_jax.hrf import HRF_NORM_PREFIX, HRF_PREFIX, HRFDense, HRFSpec

Array = jax.Array

# (path of a linear/conv inside the redrawn module, fan_in, fan_out) -> (kernel bound, bias
# bound) of uniform draws; a bound of 0 draws zeros
Rule = Callable[[tuple[str, ...], int, int], tuple[float, float]]


def torch_rule(path: tuple[str, ...], fan_in: int, fan_out: int) -> tuple[float, float]:
    """PyTorch's ``nn.Linear``/``nn.Conv*`` default: kernel and bias ``+-1/sqrt(fan_in)``."""
    return 1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in)


def fairseq_rule(path: tuple[str, ...], fan_in: int, fan_out: int) -> tuple[float, float]:
    """fairseq's ``MultiheadAttention.reset_parameters`` on ``attn/{query,key,value,out}``
    (q/k/v xavier-uniform with gain ``1/sqrt(2)``, their biases left at nn.Linear's; out
    xavier-uniform, bias 0); ``torch_rule`` elsewhere."""
    if len(path) >= 2 and path[-2] == "attn":
        xavier = math.sqrt(6 / (fan_in + fan_out))
        if path[-1] in ("query", "key", "value"):
            return xavier / math.sqrt(2), 1 / math.sqrt(fan_in)
        if path[-1] == "out":
            return xavier, 0.0
    return torch_rule(path, fan_in, fan_out)


def _uniform(key: Array, shape: tuple[int, ...], bound: float, dtype: jnp.dtype) -> Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _redraw_kernel_node(node: Mapping[str, Any], key: Array, rule: Rule,
                        path: tuple[str, ...], hrf_init: str) -> dict[str, Any]:
    """A ``{kernel[, bias][, hrf_i ..]}`` node drawn by ``rule`` (see the module docstring)."""
    kernel = node["kernel"]
    fan_out = kernel.shape[-1]
    chain = sorted((k for k in node if k.startswith(HRF_PREFIX)
                    and not k.startswith(HRF_NORM_PREFIX)),
                   key=lambda k: int(k.removeprefix(HRF_PREFIX)))
    # the plain layer's fan-in: a conv kernel's taps times its input channels (per group)
    fan_in = node[chain[0]]["kernel"].shape[0] if chain else math.prod(kernel.shape[:-1])
    k_key, b_key = jax.random.split(key)
    kernel_bound, bias_bound = rule(path, fan_in, fan_out)
    out = dict(node)
    if not chain:
        out["kernel"] = _uniform(k_key, kernel.shape, kernel_bound, kernel.dtype)
    elif hrf_init == "function_preserving":
        host = _uniform(k_key, (fan_in, fan_out), kernel_bound, jnp.float32)
        for name in chain:
            host = jnp.matmul(node[name]["kernel"].T, host, precision="highest")
        out["kernel"] = host.astype(kernel.dtype)
    elif hrf_init != "balanced":
        host_bound = rule(path, kernel.shape[0], fan_out)[0]
        out["kernel"] = _uniform(k_key, kernel.shape, host_bound, kernel.dtype)
    if "bias" in node:
        out["bias"] = _uniform(b_key, node["bias"].shape, bias_bound, node["bias"].dtype)
    return out


def redraw(params: Mapping[str, Any], key: Array, rule: Rule, hrf_init: str,
           path: tuple[str, ...] = ()) -> dict[str, Any]:
    """``params`` with every kernel (and its bias) redrawn by ``rule``; other leaves kept."""
    if "kernel" in params:
        return _redraw_kernel_node(params, key, rule, path, hrf_init)
    names = sorted(params)
    keys = jax.random.split(key, len(names))
    return {name: redraw(params[name], k, rule, hrf_init, (*path, name))
            if isinstance(params[name], Mapping) else params[name]
            for name, k in zip(names, keys, strict=True)}


def drawn_at_init(cls: type[nn.Module], key: Array, rule: Rule, hrf_init: str
                  ) -> type[nn.Module]:
    """``cls`` whose freshly initialised ``params`` are redrawn by ``rule`` from ``key``.

    Build it only while initialising (``is_initializing()``): applying needs no redraw, and
    the plain class keeps the same parameter tree.
    """
    return nn.map_variables(cls, "params", trans_out_fn=lambda v: {
        **v, "params": redraw(v["params"], key, rule, hrf_init)}, init=True, mutable=True)


def hrf_dense_drawn_at_init(spec: HRFSpec, features: int, target: str, name: str,
                            key: Array | None, rule: Rule) -> nn.Module:
    """``spec.dense(features, target, name)`` drawn by ``rule`` from ``key`` at init;
    ``key=None`` (not initialising, or a preset that keeps flax's draws): ``spec.dense``."""
    if key is None:
        return spec.dense(features, target, name)
    # HRFSpec.dense's arguments: each spec field ``f`` is HRFDense's ``hrf_f``
    options = {f"hrf_{f.name}": getattr(spec, f.name)
               for f in dataclasses.fields(spec) if f.name != "targets"}
    options["hrf_ratio"] = spec.ratio if target in spec.targets else 0
    return drawn_at_init(HRFDense, key, rule, spec.init)(features, **options, name=name)
