"""The README's model-configs table: sizes, parameter counts and forward FLOPs per config.

``python -m hrf_jax.models.table`` prints it; ``--write README.md`` replaces the text
between ``<!-- configs-table:start -->`` and ``<!-- configs-table:end -->``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from hrf_jax.models.conformer import ConformerConfig
from hrf_jax.models.convtransformer import ConvTransformerConfig
from hrf_jax.models.registry import build_model, get_config, list_configs
from hrf_jax.models.speechformer import SpeechFormerConfig
from hrf_jax.reparam import count_params

START, END = "<!-- configs-table:start -->", "<!-- configs-table:end -->"
HRF_RATIOS = (2, 4, 8)
NUM_CLASSES, FEAT_DIM, FRAMES = 4, 128, 300  # 3 s at a 10 ms hop, 128 log-Mel bins
COLUMNS = ("backbone", "size", "layers", "width", "heads", "FFN width", "params",
           *(f"params HRF x{r}" for r in HRF_RATIOS), "MFLOPs (3 s)")


def describe(cfg: Any, feat_dim: int = FEAT_DIM) -> dict[str, str]:
    """Layers, width, heads and FFN width of a config, as table cells."""
    if isinstance(cfg, ConformerConfig | ConvTransformerConfig):
        return {"layers": str(cfg.num_layers), "width": str(cfg.d_model),
                "heads": str(cfg.num_heads), "FFN width": str(cfg.ffn_dim)}
    if isinstance(cfg, SpeechFormerConfig):
        widths = [cfg.input_dim_proj or feat_dim]
        for e in cfg.expand:
            widths.append(widths[-1] * e)
        ffn = [int(round(cfg.ffn_ratio * w)) for w in widths]
        join = lambda xs: "/".join(str(x) for x in xs)  # per stage
        return {"layers": "+".join(str(n) for n in cfg.num_layers), "width": join(widths),
                "heads": str(cfg.num_heads), "FFN width": join(ffn)}
    raise TypeError(f"no description for config type {type(cfg).__name__}")


def _inputs(frames: int, feat_dim: int) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    return (jax.ShapeDtypeStruct((1, frames, feat_dim), jnp.float32),
            jax.ShapeDtypeStruct((1, frames), jnp.bool_))


def param_count(backbone: str, size: str, hrf_ratio: float = 0, **kw: Any) -> int:
    """Trainable parameters (``params`` collection) of a config, from shapes only."""
    model = build_model(backbone, size, num_classes=NUM_CLASSES, hrf_ratio=hrf_ratio, **kw)
    feats, mask = _inputs(64, FEAT_DIM)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), feats, mask)
    return count_params(shapes["params"])


def forward_flops(backbone: str, size: str, frames: int = FRAMES) -> float:
    """XLA cost-analysis FLOPs of one eval forward pass, batch 1, ``frames`` x 128 input."""
    model = build_model(backbone, size, num_classes=NUM_CLASSES)
    feats, mask = _inputs(frames, FEAT_DIM)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), feats, mask)
    fn = jax.jit(lambda v, x, m: model.apply(v, x, m, train=False))
    cost = fn.lower(variables, feats, mask).compile().cost_analysis()
    if isinstance(cost, list | tuple):  # older jax returns one dict per device
        cost = cost[0]
    return float(cost["flops"])


def config_rows(with_flops: bool = True) -> list[dict[str, str]]:
    """One row of table cells per registered config."""
    rows = []
    for backbone, size in list_configs():
        row = {"backbone": backbone, "size": size, **describe(get_config(backbone, size))}
        row["params"] = f"{param_count(backbone, size):,}"
        for r in HRF_RATIOS:
            row[f"params HRF x{r}"] = f"{param_count(backbone, size, r):,}"
        if with_flops:
            row["MFLOPs (3 s)"] = f"{forward_flops(backbone, size) / 1e6:,.1f}"
        rows.append(row)
    return rows


def render(rows: list[dict[str, str]]) -> str:
    """Markdown table of ``rows``, with a note on what the numbers mean."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row.get(c, "") for c in COLUMNS) + " |" for row in rows]
    note = (
        f"\nParameters count the `params` collection for {FEAT_DIM}-dim log-Mel input and "
        f"{NUM_CLASSES} classes; HRF columns use the default target (first FFN linear), "
        "`hrf_base=\"in\"`, depth 1; after `merge_hrf` every HRF model has the plain count. "
        f"FLOPs: XLA cost analysis of one eval forward pass, batch 1, {FRAMES} frames "
        f"({FRAMES // 100} s at a 10 ms hop), counted on the program this checkout compiles "
        "(im2col convs, the windowed attention's form), so it moves when an inference form "
        "changes (the light rows are checked by a test). SpeechFormer widths and FFN widths "
        "are per stage."
    )
    return "\n".join(lines) + "\n" + note + "\n"


def parse(markdown: str) -> list[dict[str, str]]:
    """Rows of the configs table between the README markers, as dicts of cells."""
    match = re.search(re.escape(START) + r"(.*?)" + re.escape(END), markdown, re.S)
    if match is None:
        raise ValueError(f"markers {START} ... {END} not found")
    lines = [ln.strip() for ln in match.group(1).splitlines() if ln.strip().startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True))
            for ln in lines[2:]]


def write(path: Path, table: str) -> None:
    """Replaces the text between the markers in ``path`` with ``table``."""
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path}: markers {START} and {END} are missing; add them first")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{table}{END}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="README to update in place")
    args = parser.parse_args(argv)
    table = render(config_rows())
    if args.write:
        write(args.write, table)
    else:
        print(table)


if __name__ == "__main__":
    main()
