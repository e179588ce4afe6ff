"""Draws the HRF / deHRF diagram of the README: ``python docs/make_diagram.py``.

Writes ``docs/hrf_diagram.svg`` (and ``.png`` with ``--png``). Left: the feed-forward block
while it trains, with the inserted linear HRF layer (no nonlinearity after it). Right: the
same block after deHRF, where the two linear layers are one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib.patches import FancyBboxPatch  # noqa: E402

HERE = Path(__file__).resolve().parent
PLAIN, HRF, MERGED, EDGE = "#e8eef7", "#f9d9a8", "#bfe3c0", "#33415c"


def _box(ax, x: float, y: float, w: float, h: float, text: str, color: str) -> None:
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h,
                                boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor=EDGE, linewidth=1.2))
    ax.text(x, y, text, ha="center", va="center", fontsize=9, family="DejaVu Sans")


def _arrow(ax, x: float, y0: float, y1: float) -> None:
    ax.annotate("", xy=(x, y1), xytext=(x, y0),
                arrowprops={"arrowstyle": "-|>", "color": EDGE, "linewidth": 1.1})


def _column(ax, x: float, title: str, boxes: list[tuple[str, str]], note: str) -> None:
    ax.text(x, 6.55, title, ha="center", va="center", fontsize=11, weight="bold")
    ys = [5.7 - 0.9 * i for i in range(len(boxes))]
    ax.text(x, ys[0] + 0.55, "x  (B, T, d)", ha="center", fontsize=8, color="#555")
    for (text, color), y in zip(boxes, ys, strict=True):
        _box(ax, x, y, 2.5, 0.52, text, color)
    for y0, y1 in zip(ys, ys[1:], strict=False):
        _arrow(ax, x, y0 - 0.27, y1 + 0.27)
    _arrow(ax, x, ys[-1] - 0.27, ys[-1] - 0.72)
    ax.text(x, ys[-1] - 0.9, "+ residual", ha="center", fontsize=8, color="#555")
    ax.text(x, 0.35, note, ha="center", va="center", fontsize=8.5, color="#222")


def draw() -> plt.Figure:
    """The figure: HRF block (training) -> merge_hrf -> plain block (deployment)."""
    fig, ax = plt.subplots(figsize=(8.4, 4.6))
    ax.set(xlim=(0, 10), ylim=(0, 7))
    ax.axis("off")
    _column(ax, 2.2, "training: FFN with HRF", [
        ("LayerNorm (pre-LN blocks)", PLAIN),
        ("HRF  d -> r = k d  (linear)", HRF),
        ("fc1  r -> d_ff", PLAIN),
        ("Swish / ReLU, dropout", PLAIN),
        ("fc2  d_ff -> d", PLAIN),
    ], "params grow: + d r + r + (r - d) d_ff")
    _column(ax, 7.8, "deployment: plain FFN", [
        ("LayerNorm (pre-LN blocks)", PLAIN),
        ("fc1'  d -> d_ff", MERGED),
        ("Swish / ReLU, dropout", PLAIN),
        ("fc2  d_ff -> d", PLAIN),
    ], "same params, FLOPs and outputs as the plain model")
    ax.annotate("", xy=(6.35, 4.35), xytext=(3.65, 4.35),
                arrowprops={"arrowstyle": "-|>", "color": "#b5651d", "linewidth": 2})
    ax.text(5.0, 4.75, "deHRF: merge_hrf", ha="center", fontsize=10, color="#b5651d",
            weight="bold")
    ax.text(5.0, 3.75, "K' = K_hrf @ K_fc1\nb' = b_hrf @ K_fc1 + b_fc1", ha="center",
            va="center", fontsize=9, family="DejaVu Sans Mono")
    ax.text(5.0, 2.75, "exact: the chain is linear\n(no nonlinearity, norm or\ndropout "
            "between HRF and fc1)", ha="center", va="center", fontsize=8, color="#444")
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "hrf_diagram.svg")
    parser.add_argument("--png", action="store_true", help="also write a .png beside it")
    args = parser.parse_args()
    # A fixed hash salt and no date keep the SVG byte-identical between runs.
    matplotlib.rcParams["svg.hashsalt"] = "hrf-jax"
    fig = draw()
    fig.savefig(args.out, metadata={"Date": None})
    if args.png:
        fig.savefig(args.out.with_suffix(".png"), dpi=120)
    plt.close(fig)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
