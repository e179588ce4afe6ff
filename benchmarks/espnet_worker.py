"""ESPnet's Conformer ``Encoder`` at hrf_jax's light size, one utterance in PyTorch eager mode.

Run by a python with torch and espnet (not hrf_jax), from ``benchmarks/eager_latency.py``::

    python benchmarks/espnet_worker.py '{"frames": [300, 651], "repeats": 50, "npz": PATH}'

Builds the encoder as hrf_jax's Conformer light is built in its reference preset (d 48, 4
heads, 6 blocks, FFN 192, conv2d subsampling, macaron, relative positions, swish, kernel 31,
final LayerNorm) plus a linear head on the time-mean, from ``torch.manual_seed(0)``. With
``npz`` it also writes the weights, one input and its logits there (for the parity check on
the hrf_jax side). Prints one JSON line: median milliseconds per utterance for each length.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from eager_timing import FEAT_DIM, NUM_CLASSES, time_and_save


def light_encoder() -> Any:
    from espnet.nets.pytorch_backend.conformer.encoder import Encoder

    return Encoder(idim=FEAT_DIM, attention_dim=48, attention_heads=4, linear_units=192,
                   num_blocks=6, input_layer="conv2d", normalize_before=True,
                   macaron_style=True, pos_enc_layer_type="rel_pos",
                   selfattention_layer_type="rel_selfattn", activation_type="swish",
                   use_cnn_module=True, cnn_module_kernel=31)


def main(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec.get("threads", 2))
    torch.manual_seed(0)
    encoder, head = light_encoder().eval(), torch.nn.Linear(48, NUM_CLASSES).eval()

    def logits(x: Any) -> Any:
        out, _ = encoder(x, torch.ones(1, 1, x.shape[1], dtype=torch.bool))
        return head(out.mean(dim=1))

    return time_and_save(spec, encoder, head, logits)


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
