"""XLA compiler options a model asks for its train and eval steps on CPU, where this jaxlib
knows them.

Recent XLA CPU builds hand matmuls and also elementwise and reduce fusions to YNNPACK. For
the SpeechFormer's local attention that costs: a YNNPACK fusion cannot read a shifted slice
of the padded keys in place, so every window offset's keys are copied first. A train step
compiled with matmul fusions only (``YNN_DOTS_ONLY``) ran 1.2-1.6x faster for every SpeechFormer
size, with the same loss; the Conformer and ConvTransformer steps were unchanged to 12 % slower
(BENCHMARKS.md, "Train steps with YNNPACK for matmuls only"), so a model opts in (its
``xla_cpu_train_options``). Inference, one utterance or an eval batch, is another program,
where each model asks for the setting that measured fastest (its ``xla_cpu_eval_options``;
BENCHMARKS.md, "Inference without most YNNPACK fusions"): YNNPACK for reductions only
(``YNN_REDUCE_ONLY``), or, for a batch through the SpeechFormer, whose local attention then
sums over shifted slices, not at all (``NO_YNN``); one utterance takes the matmul form of that
attention, and there the SpeechFormer also asks for reductions only
(``xla_cpu_utterance_options``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

# dots, with the elementwise work around them, still go to YNNPACK; other fusions to XLA's own
YNN_DOTS_ONLY = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
# no YNNPACK fusions: matmuls to Eigen, everything else to XLA's own emitters
NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}
# reductions only (XLA's own row reductions, e.g. a softmax's max, ran as slow reduce-windows)
YNN_REDUCE_ONLY = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def _known(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib's CPU compiler accepts ``options`` (older ones lack YNNPACK's)."""
    # an unknown option or value raises jax's JaxRuntimeError (XlaRuntimeError in older jax),
    # a RuntimeError: "No such compile option" / "not a valid enum value"
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.float32(0)).compile()
    except RuntimeError:
        return False
    return True


def _asked(model: Any, attribute: str, platform: str) -> dict[str, str]:
    options = getattr(model, attribute, None)
    if platform != "cpu" or not options or not _known(tuple(sorted(options.items()))):
        return {}
    return dict(options)


def train_compiler_options(model: Any, platform: str) -> dict[str, str]:
    """The ``compiler_options`` of ``model``'s train step on ``platform``: the model's
    ``xla_cpu_train_options`` on CPU when this jaxlib knows them, else none (XLA's defaults)."""
    return _asked(model, "xla_cpu_train_options", platform)


def eval_compiler_options(model: Any, platform: str | None = None, *,
                          utterance: bool = False) -> dict[str, str]:
    """The ``compiler_options`` of ``model``'s inference (``train=False``) on ``platform``
    (default: JAX's default backend): its ``xla_cpu_eval_options`` on CPU when this jaxlib
    knows them, else none. ``utterance``: a program that runs one utterance at a time
    (batch 1: deployment, latency), which takes the model's ``xla_cpu_utterance_options``
    where it has them."""
    attribute = "xla_cpu_eval_options"
    if utterance and hasattr(model, "xla_cpu_utterance_options"):
        attribute = "xla_cpu_utterance_options"
    return _asked(model, attribute, platform or jax.default_backend())
