"""The official SpeechFormer (PyTorch) timed in a fresh process, for ``hrf-jax bench
--reference-speechformer``. Run as a script by the reference python, which needs torch and
numpy but not hrf_jax::

    python hrf_jax/bench/torch_worker.py '{"dir": DIR, "frames": 651, "batch": 32, ...}'

It prints one JSON line with the same keys as ``hrf_jax.bench.worker``. The official model is
imported from the user's checkout ``DIR`` at run time; nothing of it is part of this package.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from statistics import median
from typing import Any

from procmem import peak_rss_mb  # this script's folder is sys.path[0]: hrf_jax is not needed


def timed_ms(fn: Callable[[], Any], repeats: int, warmup: int, sync: Callable[[], Any]) -> float:
    """Median milliseconds of ``fn()`` after ``warmup`` calls, each ended by ``sync()`` (the
    GPU's queue drained, as ``jax.block_until_ready`` does on the hrf_jax side)."""
    for _ in range(warmup):
        fn()
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return median(times) * 1e3


def official_speechformer_s(ref_dir: str, feat_dim: int, num_classes: int) -> Any:
    """SpeechFormer-S as the official training script builds it for features at a 10 ms hop:
    width = feature width, FFN width = width / 2, layers (2, 2, 4, 4), 8 heads, expand 1 after
    each of the first three stages (the constructor drops the list's last entry)."""
    sys.path.insert(0, ref_dir)  # the official code imports its `model` / `module` packages
    from model.speechformer import SpeechFormer

    return SpeechFormer(input_dim=feat_dim, ffn_embed_dim=feat_dim // 2, num_layers=[2, 2, 4, 4],
                        num_heads=8, hop=0.01, num_classes=num_classes, expand=[1, 1, 1, -1],
                        dropout=0.1, attention_dropout=0.1)


def reference_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train step (SGD lr 1e-3 momentum 0.9, cross-entropy, train mode) on one batch of
    ``(batch, frames, feat_dim)`` features, every frame real (the official model takes no
    mask); then one utterance in eval mode under ``no_grad``; then the fp32 2048^3 matmul
    throughput of this process."""
    import torch

    rss0 = peak_rss_mb()
    torch.set_num_threads(spec["threads"])
    device = torch.device("cuda" if spec["device"] == "gpu" else "cpu")
    if device.type == "cuda":
        # XLA's default fp32 matmul precision on these GPUs is TF32: the same for torch
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = official_speechformer_s(spec["dir"], spec["feat_dim"], spec["num_classes"])
    model = model.to(device)
    batch, frames = spec["batch"], spec["frames"]
    x = torch.randn(batch, frames, spec["feat_dim"], device=device)
    y = torch.arange(batch, device=device) % spec["num_classes"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    model.train()
    step_ms = timed_ms(step, spec["repeats"], 2, sync)
    model.eval()
    one = torch.randn(1, frames, spec["feat_dim"], device=device)
    with torch.no_grad():
        latency_ms = timed_ms(lambda: model(one), spec["latency_repeats"], 3, sync)
    a = torch.randn(2048, 2048, device=device)
    peak = 2 * 2048**3 / (timed_ms(lambda: a @ a, 5, 2, sync) / 1e3) / 1e9
    device_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {"step_ms": step_ms, "utt_per_s": batch / (step_ms / 1e3), "latency_ms": latency_ms,
            "matmul_peak_gflops": peak, "params": sum(p.numel() for p in trainable),
            "threads": torch.get_num_threads(), "device_peak_mb": device_peak,
            "peak_rss_mb": peak_rss_mb(), "rss_at_start_mb": rss0,
            "device": str(torch.cuda.get_device_name() if device.type == "cuda" else device),
            "torch": torch.__version__}


if __name__ == "__main__":
    print(json.dumps(reference_worker(json.loads(sys.argv[1]))))
