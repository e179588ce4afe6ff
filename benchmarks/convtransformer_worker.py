"""fairseq's ConvTransformer encoder at hrf_jax's light size, written with PyTorch modules; one
utterance in eager mode.

Run by a python with torch (not hrf_jax), from ``benchmarks/eager_latency.py``::

    python benchmarks/convtransformer_worker.py '{"frames": [300, 651], "repeats": 50}'

fairseq itself does not import on Python 3.11 (its dataclass configs use mutable defaults), so
this file builds the encoder of ``models/speech_to_text/convtransformer.py`` from PyTorch
modules under fairseq's parameter names: two 3x3 stride-2 convs with padding 1 and ReLU, the
subsampled frame flattened channel-major into ``out``, ``x * sqrt(d)`` plus fairseq's
sinusoids (positions from 2), post-LN layers (attention via ``scaled_dot_product_attention``,
ReLU FFN, LayerNorm eps 1e-5), then a linear head on the time-mean. hrf_jax loads these
weights with ``from_fairseq_convtransformer`` and checks the logits, so both sides compute one
function. Prints one JSON line: median milliseconds per utterance for each length.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from eager_timing import FEAT_DIM, NUM_CLASSES, time_and_save

D_MODEL, LAYERS, HEADS, FFN, CHANNELS = 64, 4, 4, 512, 32  # hrf_jax's light size


def light_encoder() -> Any:
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
                nn.Linear(D_MODEL, D_MODEL) for _ in range(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape

            def heads(proj: nn.Linear) -> torch.Tensor:
                return proj(x).view(b, t, HEADS, D_MODEL // HEADS).transpose(1, 2)

            out = nn.functional.scaled_dot_product_attention(
                heads(self.q_proj), heads(self.k_proj), heads(self.v_proj))
            return self.out_proj(out.transpose(1, 2).reshape(b, t, D_MODEL))

    class Layer(nn.Module):  # post-LN, as fairseq's default --encoder-normalize-before False
        def __init__(self) -> None:
            super().__init__()
            self.self_attn = Attention()
            self.self_attn_layer_norm = nn.LayerNorm(D_MODEL)
            self.fc1, self.fc2 = nn.Linear(D_MODEL, FFN), nn.Linear(FFN, D_MODEL)
            self.final_layer_norm = nn.LayerNorm(D_MODEL)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.self_attn_layer_norm(x + self.self_attn(x))
            return self.final_layer_norm(x + self.fc2(torch.relu(self.fc1(x))))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, CHANNELS, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(CHANNELS, CHANNELS, 3, 2, 1), nn.ReLU())
            self.out = nn.Linear(CHANNELS * math.ceil(FEAT_DIM / 4), D_MODEL)
            self.transformer_layers = nn.ModuleList(Layer() for _ in range(LAYERS))
            half = D_MODEL // 2
            freq = torch.exp(torch.arange(half) * -(math.log(10000.0) / (half - 1)))
            self.register_buffer("freq", freq, persistent=False)

        def forward(self, feats: torch.Tensor) -> torch.Tensor:
            x = self.conv(feats.unsqueeze(1))  # (B, C, T', F')
            b, _, t, _ = x.shape
            x = self.out(x.transpose(1, 2).reshape(b, t, -1))
            angles = (torch.arange(t) + 2.0)[:, None] * self.freq[None, :]
            x = x * math.sqrt(D_MODEL) + torch.cat([angles.sin(), angles.cos()], dim=1)
            for layer in self.transformer_layers:
                x = layer(x)
            return x

    return Encoder()


def main(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec.get("threads", 2))
    torch.manual_seed(0)
    encoder, head = light_encoder().eval(), torch.nn.Linear(D_MODEL, NUM_CLASSES).eval()
    return time_and_save(spec, encoder, head, lambda x: head(encoder(x).mean(dim=1)))


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
