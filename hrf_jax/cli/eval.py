"""``hrf-jax eval``: metrics of a run's best checkpoint on a split, optional PNG plots."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate the best checkpoint of a workdir")
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--plots", action="store_true",
                   help="write confusion matrix and learning curves as PNG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hrf_jax.evaluate import evaluate
    from hrf_jax.plots import plot_confusion, plot_learning_curves
    from hrf_jax.run import Run
    from hrf_jax.train import DataParallel, make_eval_step

    r = Run.load(args.workdir)
    parallel = DataParallel()
    source = getattr(r.dataset(), args.split)
    result = evaluate(make_eval_step(r.model(), parallel), r.variables("best"), source,
                      parallel, r.num_classes, r.config.train.eval_batch_size,
                      vote=r.group_vote)
    print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=2))
    if args.plots:
        out = r.path / "plots"
        paths = [plot_confusion(result["confusion"], r.class_names,
                                out / f"confusion_{args.split}.png")]
        if r.metrics_log.is_file():
            paths.append(plot_learning_curves(r.metrics_log, out / "learning_curves.png"))
        print("plots: " + ", ".join(str(p) for p in paths))
    return 0
