"""Paired statistics of experiment grids: two variants compared run by run (paired by seed).

For each contrast ``b - a`` (e.g. light+HRF minus light, in percentage points): the per-seed
differences, their mean with a percentile-bootstrap 95 % CI (10,000 resamples, seeded), the
two-sided Wilcoxon signed-rank p and the TOST equivalence p at +-1 point (paired t). Numpy
and the standard library only (scipy is not a dependency): the signed-rank null distribution
is enumerated exactly, the Student t CDF has a closed form for the integer degrees of
freedom a paired test has.

    python -m experiments.stats experiments/results/synthetic_all.json \
        --contrast light_hrf4-light --contrast large-light --metric ua
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

EXACT_MAX_N = 50  # above: the normal approximation (the exact count grows as n^3)


def _seed_order(seed: Hashable) -> tuple[bool, Any]:
    """Integer seeds in numeric order (10 after 9), then any others by their text."""
    return (False, seed) if isinstance(seed, int) else (True, str(seed))


def pair_by_seed(a: Mapping[Hashable, float], b: Mapping[Hashable, float]
                 ) -> tuple[list[Hashable], np.ndarray, np.ndarray]:
    """``(seeds, a, b)`` with the values of both runs of each seed, in sorted seed order; a
    seed present in one mapping only is an error (dropping it would bias the pairing)."""
    unpaired = sorted(set(a) ^ set(b), key=str)
    if unpaired:
        raise ValueError(f"seeds {unpaired} have a run in only one of the two variants")
    seeds = sorted(a, key=_seed_order)
    if not seeds:
        raise ValueError("no paired runs")
    return (seeds, np.array([a[s] for s in seeds], np.float64),
            np.array([b[s] for s in seeds], np.float64))


def bootstrap_mean_ci(diffs: Sequence[float], *, n_resamples: int = 10_000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``diffs``: resample the pairs with replacement
    ``n_resamples`` times (numpy ``default_rng(seed)``, so a table is reproducible)."""
    d = np.asarray(diffs, np.float64)
    if d.size == 0:
        raise ValueError("bootstrap of an empty sample")
    idx = np.random.default_rng(seed).integers(0, d.size, (n_resamples, d.size))
    means = d[idx].mean(axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def wilcoxon_signed_rank(diffs: Sequence[float]) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of ``diffs`` against zero: ``(W+, p)``.

    Zero differences are dropped (Wilcoxon's rule, scipy's default). Up to ``EXACT_MAX_N``
    non-zero differences the p-value is exact: the null distribution of the rank sum of the
    positive differences is enumerated over all ``2^n`` sign patterns (conditional on the
    midranks, so ties are exact too; without ties this is scipy's ``method="exact"``).
    Above, the normal approximation with the tie-corrected variance, no continuity
    correction (scipy's ``method="approx"``). ``p = 1`` when every difference is zero.
    """
    d = np.asarray(diffs, np.float64)
    d = d[d != 0]
    n = d.size
    if n == 0:
        return 0.0, 1.0
    ranks = _midranks(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    if n <= EXACT_MAX_N:
        # doubled midranks are integers: count sign patterns by rank sum (subset-sum DP)
        twice = np.rint(2 * ranks).astype(np.int64)
        counts = np.zeros(int(twice.sum()) + 1, np.float64)
        counts[0] = 1.0
        for r in twice:
            counts[r:] = counts[r:] + counts[:-r]
        probs = counts / counts.sum()
        t = int(round(2 * w_plus))
        p = 2 * min(probs[: t + 1].sum(), probs[t:].sum())
        return w_plus, float(min(p, 1.0))
    mean = n * (n + 1) / 4
    _, tie_sizes = np.unique(ranks, return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24 - (tie_sizes ** 3 - tie_sizes).sum() / 48
    z = (w_plus - mean) / math.sqrt(var)
    return w_plus, float(math.erfc(abs(z) / math.sqrt(2)))


def student_t_cdf(t: float, df: int) -> float:
    """CDF of Student's t with integer ``df`` >= 1 (Abramowitz & Stegun 26.7.3-4, exact)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:  # odd: (2/pi)(theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        total, term = 0.0, 1.0
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c2 * (2 * k) / (2 * k + 1)
        a = 2 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    else:  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        total, term = 0.0, 1.0
        for k in range(1, df // 2 + 1):
            total += term
            term *= c2 * (2 * k - 1) / (2 * k)
        a = s * total
    return 0.5 + 0.5 * math.copysign(a, t)


def tost_paired(diffs: Sequence[float], margin: float = 1.0) -> float:
    """p of the two one-sided paired t tests that the mean difference lies in
    ``(-margin, margin)``: equivalence at level alpha when p < alpha. Needs 2 pairs."""
    d = np.asarray(diffs, np.float64)
    if d.size < 2:
        raise ValueError("TOST needs at least 2 paired runs")
    mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))
    if se == 0:
        return 0.0 if abs(mean) < margin else 1.0
    df = d.size - 1
    p_lower = 1 - student_t_cdf((mean + margin) / se, df)  # H0: mean <= -margin
    p_upper = student_t_cdf((mean - margin) / se, df)  # H0: mean >= margin
    return float(max(p_lower, p_upper))


@dataclasses.dataclass(frozen=True)
class Contrast:
    """``b - a`` over paired seeds; differences in the unit of the inputs (points)."""

    name: str
    seeds: tuple[Hashable, ...]
    diffs: tuple[float, ...]
    mean: float
    ci: tuple[float, float]
    p_wilcoxon: float
    p_tost: float
    margin: float


def contrast(name: str, a: Mapping[Hashable, float], b: Mapping[Hashable, float], *,
             margin: float = 1.0, n_resamples: int = 10_000, seed: int = 0) -> Contrast:
    """Everything of the contrast ``b - a`` of two variants' scores keyed by seed."""
    seeds, va, vb = pair_by_seed(a, b)
    d = vb - va
    return Contrast(
        name=name, seeds=tuple(seeds), diffs=tuple(float(x) for x in d), mean=float(d.mean()),
        ci=bootstrap_mean_ci(d, n_resamples=n_resamples, seed=seed),
        p_wilcoxon=wilcoxon_signed_rank(d)[1],
        p_tost=tost_paired(d, margin) if d.size >= 2 else float("nan"), margin=margin)


def markdown_contrasts(contrasts: Sequence[Contrast], unit: str = "points") -> str:
    """A markdown table: one row per contrast with n, mean difference, bootstrap CI,
    Wilcoxon p, TOST p and the per-seed differences."""
    margin = {c.margin for c in contrasts}
    tost = f"TOST p (±{margin.pop():g})" if len(margin) == 1 else "TOST p (± margin)"
    lines = [f"| contrast | n | mean diff ({unit}) | 95 % CI (bootstrap) | Wilcoxon p | "
             f"{tost} | per-seed diffs |", "|---|---|---|---|---|---|---|"]
    for c in contrasts:
        per_seed = ", ".join(f"{s}: {x:+.2f}" for s, x in zip(c.seeds, c.diffs, strict=True))
        lines.append(f"| {c.name} | {len(c.diffs)} | {c.mean:+.2f} | "
                     f"[{c.ci[0]:+.2f}, {c.ci[1]:+.2f}] | {c.p_wilcoxon:.3g} | "
                     f"{c.p_tost:.3g} | {per_seed} |")
    return "\n".join(lines) + "\n"


def scores_by_seed(result: Mapping, backbone: str, variant: str, metric: str = "ua",
                   endpoint: str = "test") -> dict[int, float]:
    """Test ``metric`` in points of each seed of a grid result (``experiments.run``'s JSON),
    averaged over the folds: the folds are the protocol, the seed is the replicate.
    ``endpoint``: ``"test"`` (the checkpoint chosen on validation data) or ``"test_last"``
    (the final state)."""
    per_seed: dict[int, list[float]] = {}
    for cell in result["cells"]:
        if cell["backbone"] == backbone and cell["variant"] == variant:
            if cell.get(endpoint) is None:
                raise ValueError(f"{backbone}/{variant} seed {cell['seed']}: no {endpoint!r} "
                                 "metrics (a run finished before final.json kept them)")
            per_seed.setdefault(cell["seed"], []).append(100 * cell[endpoint][metric])
    folds = {len(v) for v in per_seed.values()}
    if len(folds) > 1:
        raise ValueError(f"{backbone}/{variant}: seeds have different numbers of folds {folds}")
    return {s: float(np.mean(v)) for s, v in per_seed.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result", type=Path, help="a grid result JSON of experiments.run")
    parser.add_argument("--contrast", action="append", required=True,
                        help="B-A, e.g. light_hrf4-light (B minus A), repeatable")
    parser.add_argument("--metric", default="ua")
    parser.add_argument("--margin", type=float, default=1.0, help="TOST margin in points")
    args = parser.parse_args(argv)
    result = json.loads(args.result.read_text())
    rows = []
    for backbone in sorted({c["backbone"] for c in result["cells"]}):
        for spec in args.contrast:
            b, _, a = spec.partition("-")
            rows.append(contrast(f"{backbone}: {b} - {a}",
                                 scores_by_seed(result, backbone, a, args.metric),
                                 scores_by_seed(result, backbone, b, args.metric),
                                 margin=args.margin))
    print(f"{args.metric} (test, points), paired by seed\n")
    print(markdown_contrasts(rows))
    return 0


def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size, np.float64)
    sorted_x = x[order]
    i = 0
    while i < x.size:
        j = i
        while j + 1 < x.size and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


if __name__ == "__main__":
    sys.exit(main())
