"""The ``hrf-jax`` command: demo, prepare, train, eval, merge, predict, export, bench."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from hrf_jax.data import register as register_prepare
from hrf_jax.export import register as register_export


def _train(args: argparse.Namespace) -> int:
    from hrf_jax.config import apply_overrides, load_config
    from hrf_jax.loop import fit

    config = load_config(args.config_file)
    apply_overrides(config, args.overrides)
    summary = fit(config, args.workdir)
    test = summary["test"]
    if test:
        print(f"test (checkpoint of epoch {summary['selected']['epoch']}): "
              f"WA {test['wa']:.4f} UA {test['ua']:.4f} macro-F1 {test['macro_f1']:.4f}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from hrf_jax.deploy import load_run
    from hrf_jax.loop import METRICS_LOG, evaluate, open_dataset
    from hrf_jax.plots import plot_confusion, plot_learning_curves
    from hrf_jax.train import DataParallel, make_eval_step

    config, info, model, variables = load_run(args.workdir)
    ds = open_dataset(config.dataset, prepare=False)
    parallel = DataParallel()
    state = argparse.Namespace(params=variables["params"],
                               batch_stats=variables.get("batch_stats", {}))
    source = getattr(ds, args.split)
    result = evaluate(make_eval_step(model, parallel), state, source, parallel,
                      len(info["class_names"]), config.train.eval_batch_size,
                      vote=config.dataset.name == "daic_woz")
    print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=2))
    if args.plots:
        out = Path(args.workdir) / "plots"
        paths = [plot_confusion(result["confusion"], info["class_names"],
                                out / f"confusion_{args.split}.png")]
        log = Path(args.workdir) / METRICS_LOG
        if log.is_file():
            paths.append(plot_learning_curves(log, out / "learning_curves.png"))
        print("plots: " + ", ".join(str(p) for p in paths))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from hrf_jax.deploy import merge_run

    meta = merge_run(args.workdir, args.out)
    eq = meta["equivalence"]
    print(f"merged {eq['hrf_layers']} HRF layers: {eq['params_hrf']:,} -> "
          f"{eq['params_merged']:,} parameters (plain model: {eq['params_plain']:,}); "
          f"max |logit diff| {eq['max_abs_err']:.2e} (relative {eq['max_rel_err']:.2e}) "
          f"over {eq['checked_utterances']} validation utterances")
    return 0


def _predict(args: argparse.Namespace) -> int:
    if args.model:  # an exported .tflite/.onnx: numpy + LiteRT/onnxruntime, no JAX in the path
        from hrf_jax.runtime import ExportedModel

        exported = ExportedModel(args.model)
        for path in args.audio:
            print(json.dumps(exported.predict_file(path)))
        return 0
    from hrf_jax.deploy import DEPLOY_DIR, load_deploy, predict_files

    source = Path(args.checkpoint or Path(args.workdir) / DEPLOY_DIR)
    model, variables, meta = load_deploy(source)
    for row in predict_files(args.audio, model, variables, meta["run_info"]):
        print(json.dumps(row))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from hrf_jax.demo import run_demo

    run_demo(args.workdir, backbone=args.backbone, hrf_ratio=args.hrf_ratio,
             epochs=args.epochs, seed=args.seed, num_utterances=args.num_utterances,
             num_speakers=args.num_speakers, batch_size=args.batch_size,
             max_frames=args.max_frames, data_dir=args.data_dir,
             progress=not args.no_progress)
    return 0


def _benchmarks_module():
    """``benchmarks.run`` from the source checkout that holds this ``hrf_jax`` package."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "run.py").is_file():
        raise FileNotFoundError(
            f"hrf-jax bench needs a source checkout: {root / 'benchmarks' / 'run.py'} is "
            "missing (installed from a wheel?); clone the repository and `pip install -e .`")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks import run

    return run


def _bench(args: argparse.Namespace) -> int:
    return _benchmarks_module().main_from_args(args)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed, memory and size benchmarks (source checkout)")
    root = Path(__file__).resolve().parent.parent
    if (root / "benchmarks" / "run.py").is_file():
        _benchmarks_module().add_arguments(p)
    p.set_defaults(func=_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hrf-jax",
        description="HRF training and exact deHRF merging of lightweight SER Transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the main job on the synthetic corpus")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--backbone", default="conformer",
                   choices=("conformer", "speechformer", "convtransformer"))
    p.add_argument("--hrf-ratio", type=int, default=4)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-utterances", type=int, default=960,
                   help="size of the synthetic corpus (0: its full default size)")
    p.add_argument("--num-speakers", type=int, default=0,
                   help="speakers of the synthetic corpus (0: its default)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-frames", type=int, default=160, help="training crop length (frames)")
    p.add_argument("--data-dir", default="", help="default: $HRF_JAX_DATA or ~/hrf_jax_data")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_demo)

    register_prepare(sub)

    p = sub.add_parser("train", help="train (or resume) a model in a workdir",
                       description="Overrides: --config.section.field=value, e.g. "
                                   "--config.model.hrf_ratio=4 --config.optimizer.lr=1e-3")
    p.add_argument("--workdir", required=True)
    p.add_argument("--config-file", default=None,
                   help="Python file with get_config() (experiments/configs/...) or config.json")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate the best checkpoint of a workdir")
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--plots", action="store_true",
                   help="write confusion matrix and learning curves as PNG")
    p.set_defaults(func=_eval)

    p = sub.add_parser("merge", help="deHRF: best checkpoint -> plain deploy checkpoint")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", default=None, help="default: <workdir>/deploy")
    p.set_defaults(func=_merge)

    p = sub.add_parser("predict", help="emotion + probabilities of audio files (JSON lines)")
    p.add_argument("audio", nargs="+")
    p.add_argument("--workdir", default=".", help="uses <workdir>/deploy")
    p.add_argument("--checkpoint", default=None, help="a deploy folder written by merge")
    p.add_argument("--model", default=None,
                   help="an exported FILE.tflite or FILE.onnx (with FILE.json beside it) "
                        "instead of the JAX deploy checkpoint")
    p.set_defaults(func=_predict)

    register_export(sub)

    _add_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":
        args.overrides = extra
    elif extra:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as err:
        print(f"hrf-jax {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
