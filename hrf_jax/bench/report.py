"""Markdown tables of a benchmark result (the JSON that ``hrf-jax bench --out`` writes)."""

from __future__ import annotations

import json
from typing import Any


def _fmt(x: Any, spec: str = ",.1f") -> str:
    return "-" if x is None else format(x, spec)


def _section(title: str, head: list[str], rows: list[list[Any]]) -> str:
    """A titled markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return f"\n{title}\n\n" + "\n".join(lines) + "\n"


def render(result: dict[str, Any]) -> str:
    """Markdown tables of a ``hrf_jax.bench.suite.run`` result."""
    peak = result["matmul_peak_gflops"]
    t_cols = result["train_frames"]
    frames = result.get("latency_frames", 300)
    head = ["backbone", "variant", "params", f"MFLOPs fwd (T={frames})",
            f"latency ms (B=1, T={frames})"]
    for t in t_cols:
        head += [f"step ms T={t}", f"utt/s T={t}", f"MFU T={t}", f"peak RSS MB T={t}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        cells = [row["backbone"], row["variant"], _fmt(row.get("params"), ","),
                 _fmt(row.get("fwd_flops", 0) / 1e6), _fmt(row.get("latency_ms"), ".2f")]
        for t in t_cols:
            tr = row.get("train", {}).get(str(t), {})
            mfu = tr.get("gflops_per_s", 0) / peak if "step_ms" in tr else None
            cells += [_fmt(tr.get("step_ms"), ".0f"), _fmt(tr.get("utt_per_s")),
                      _fmt(mfu, ".1%"), _fmt(tr.get("peak_rss_mb"), ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines) + (
        f"\n\nfp32 matmul peak (2048^3, jax; MFU divides by it): {peak:.1f} GFLOP/s "
        f"(start {result.get('matmul_peak_gflops_start', peak):.1f}, "
        f"end {result.get('matmul_peak_gflops_end', peak):.1f})\n")
    if result.get("scaling"):
        rows = []
        for sc in result["scaling"]:
            ref = next((s.get("step_ms") for s in result["scaling"]
                        if s["frames"] == 651 and s["variant"] == sc["variant"]
                        and s["backbone"] == sc["backbone"]), None)
            ratio = sc["step_ms"] / ref if ref and "step_ms" in sc else None
            rows.append([sc["backbone"], sc["variant"], sc["frames"],
                         _fmt(sc.get("step_ms"), ".0f"), _fmt(ratio, ".2f"),
                         _fmt(sc.get("peak_rss_mb"), ".0f")])
        out += _section(f"Growth with T (train step, batch {result['batch']}):",
                        ["backbone", "variant", "T", "step ms", "x step at 651", "peak RSS MB"],
                        rows)
    if result.get("paired"):
        out += _section(
            "Merged HRF vs plain light model, one utterance, calls alternated in one process:",
            ["backbone", "T", "plain ms", "merged ms", "merged / plain"],
            [[p["backbone"], p["frames"], f"{p['light_ms']:.3f}", f"{p['merged_ms']:.3f}",
              f"{p['ratio']:.3f}"] for p in result["paired"]])
    if result.get("pipeline"):
        frames = result["pipeline"][0]["frames"]
        out += _section(
            f"Input pipeline (train step, synthetic corpus, T={frames}):",
            ["backbone", "variant", "in-memory ms/step", "pipeline ms/step", "overhead"],
            [[p["backbone"], p["variant"], f"{p['in_memory_ms']:.1f}",
              f"{p['pipeline_ms']:.1f}", f"{p['overhead']:+.1%}"] for p in result["pipeline"]])
    for rt in result.get("runtimes", []):
        out += f"\nruntime {json.dumps(rt)}\n"
    return out
