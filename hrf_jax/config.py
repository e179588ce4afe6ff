"""Run configuration as an ``ml_collections.ConfigDict``, with ``--config.a.b=v`` overrides."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

OPTIMIZERS = ("adamw", "sgd")  # the optimizer.name values train.make_optimizer builds
# Optimizer fields for the large models: at the default peak learning rate and 5 % warm-up
# they diverge (experiments/results/baselines.md); the grids and the demo use these.
LARGE_MODEL_OPTIMIZER = {"lr": 3e-4, "warmup_fraction": 0.1}


def default_config() -> ml_collections.ConfigDict:
    """The defaults of ``hrf-jax train``: a light Conformer on the synthetic corpus."""
    c = ml_collections.ConfigDict()
    c.dataset = ml_collections.ConfigDict(
        {"name": "synthetic", "data_dir": "", "manual_dir": "", "manifest": "",
         "fold": -1, "protocol": "", "normalize": "corpus",
         # synthetic corpora: 0 / negative = the corpus's own default
         "num_utterances": 0, "num_speakers": 0, "difficulty": -1.0,
         # words per class spoken in the utterances (hrf_jax/data/synthetic.py); 0: none
         "lexicon": 0,
         # emotion parameters made to carry no class, e.g. "f0_st,f0_range"; "": none
         "flat": ""}
    )
    c.model = ml_collections.ConfigDict(
        {"backbone": "conformer", "size": "light", "hrf_ratio": 0, "hrf_depth": 1,
         "hrf_targets": ("ffn",), "hrf_base": "in", "hrf_init": "variance_preserving",
         "hrf_bias": True, "dropout": 0.1, "reference": False,
         # "scale" / "batchnorm": a per-channel norm after each HRF factor, folded by the
         # merge (RepVGG/DBB gain only with BatchNorm inside their training-time branches)
         "hrf_norm": "none",
         # "field=value,...": fields of the backbone's size config replaced (parse_arch), e.g.
         # "d_model=96,num_layers=6" for a model between light and large; "" = the size as is
         "arch": ""}
    )
    # AdamW + warm-up + cosine is the default; "sgd" is SpeechFormer's recipe
    # (momentum 0.9, cosine decay).
    c.optimizer = ml_collections.ConfigDict(
        {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-2, "momentum": 0.9,
         "warmup_fraction": 0.05, "clip_norm": 1.0,
         # final lr / peak lr of the cosine; negative: the optimizer's own (adamw 0.01, sgd 0)
         "end_lr_fraction": -1.0,
         # decay of the HRF factors and their host kernels (decay on both factors of a
         # product is a nuclear-norm penalty); negative: same as weight_decay, 0: none
         "hrf_weight_decay": -1.0,
         # "glob=factor,glob=factor": lr multipliers per parameter path (parse_lr_scale), e.g.
         # the lr control "*/fc1/*=5" (train.lr_control_scale); "" = none
         "lr_scale": ""}
    )
    c.train = ml_collections.ConfigDict(
        {"epochs": 20, "batch_size": 32, "max_frames": 300, "eval_batch_size": 32,
         "label_smoothing": 0.0, "class_weights": False, "balanced": False, "seed": 0,
         "select_metric": "ua", "keep_last": 2, "save_every_steps": 0,
         "compute_dtype": "float32", "distributed": False, "progress": True,
         "log_every_steps": 10,  # host syncs: progress bar, per-step TensorBoard scalars
         # multi-host: "HOST:PORT" / -1 let JAX detect the cluster (SLURM, TPU pods)
         "coordinator_address": "", "num_processes": -1, "process_id": -1}
    )
    return c


def choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of every string field with a fixed set (of each item, for a tuple)."""
    from hrf_jax.data.registry import CORPORA, PROTOCOLS
    from hrf_jax.hrf import (  # flax: only when validating
        HRF_BASES,
        HRF_INITS,
        HRF_NORMS,
        HRF_TARGETS,
    )
    from hrf_jax.models import BACKBONES, SIZES

    return {
        "dataset.name": tuple(CORPORA),
        "dataset.normalize": ("corpus", "utterance", "none"),
        "dataset.protocol": ("", *PROTOCOLS),  # "": the corpus's own default
        "model.backbone": BACKBONES,
        "model.size": SIZES,
        "model.hrf_targets": HRF_TARGETS,
        "model.hrf_base": HRF_BASES,
        "model.hrf_init": HRF_INITS,
        "model.hrf_norm": HRF_NORMS,
        "optimizer.name": OPTIMIZERS,
        # the scores of metrics.classification_metrics that grow with quality
        "train.select_metric": ("wa", "ua", "macro_f1", "weighted_f1"),
        "train.compute_dtype": ("float32", "bfloat16"),
    }


def validate(config: ml_collections.ConfigDict, fields: Iterable[str] | None = None) -> None:
    """ValueError naming the field, the bad value and the choices, for the first field of
    ``choices()`` (of ``fields`` only, when given) whose value is not allowed; also for an
    ``optimizer.lr_scale`` that ``parse_lr_scale`` refuses."""
    wanted = None if fields is None else set(fields)
    if (wanted is None or "optimizer.lr_scale" in wanted) and "lr_scale" in config.optimizer:
        parse_lr_scale(config.optimizer.lr_scale)
    if (wanted is None or "model.arch" in wanted) and "arch" in config.model:
        parse_arch(config.model.arch)
    for field, allowed in choices().items():
        if wanted is not None and field not in wanted:
            continue
        value = _lookup(config, field)
        for item in value if isinstance(value, tuple) else (value,):
            if item not in allowed:
                raise ValueError(f"config.{field}: {item!r} is not allowed; "
                                 f"choose from {', '.join(allowed)}")


def parse_lr_scale(text: str) -> list[tuple[str, float]]:
    """``optimizer.lr_scale`` -> ``[(glob, factor), ...]`` in the order written.

    ``"glob=factor,glob=factor"``; a glob is an ``fnmatch`` pattern matched against the whole
    '/'-joined parameter path under ``params`` (``block_0/ffn1/fc1/kernel``; ``*`` crosses
    '/'), so commas and '=' cannot occur in it. A plain string, because a ConfigDict field
    set from the command line holds no mapping. ``""`` is no multiplier.
    """
    rules = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        glob, eq, factor = item.rpartition("=")
        try:
            value = float(factor)
        except ValueError:
            value = float("nan")
        if not eq or not glob.strip() or not value >= 0 or value == float("inf"):
            raise ValueError(f"config.optimizer.lr_scale: {item!r} must look like glob=factor "
                             "with a finite factor >= 0, e.g. '*/fc1/*=5'")
        rules.append((glob.strip(), value))
    return rules


def parse_arch(text: str) -> dict[str, Any]:
    """``model.arch`` -> ``{field: value}``: ``"field=value,field=value"``, each value a Python
    literal (``96``, ``0.1``, ``'rel'``); ``""`` is no override. Which fields exist is the
    backbone's size config's business (``get_config`` names the unknown ones)."""
    fields = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, eq, value = item.partition("=")
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = None
        if not eq or not name.strip().isidentifier() or parsed is None:
            raise ValueError(f"config.model.arch: {item!r} must look like field=literal, "
                             "e.g. 'd_model=96,num_layers=6'")
        fields[name.strip()] = parsed
    return fields


def _lookup(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for name in dotted.split("."):
        if name not in node:
            raise ValueError(f"config has no field {dotted!r}")
        node = node[name]
    return node


def load_config(path: str | None = None) -> ml_collections.ConfigDict:
    """Defaults, or a Python config file defining ``get_config()``, or a saved JSON config;
    validated (see ``validate``)."""
    config = _read_config(path)
    validate(config)
    return config


def _read_config(path: str | None) -> ml_collections.ConfigDict:
    if not path:
        return default_config()
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {file} does not exist")
    if file.suffix == ".json":
        return config_from_dict(json.loads(file.read_text()))
    namespace: dict = {}
    exec(compile(file.read_text(), str(file), "exec"), namespace)  # noqa: S102 - user config
    if "get_config" not in namespace:
        raise ValueError(f"config file {file} must define get_config()")
    return namespace["get_config"]()


def config_from_dict(tree: dict) -> ml_collections.ConfigDict:
    """The defaults updated with a nested dict such as a saved ``config.json``."""
    config = default_config()
    config.update_from_flattened_dict(_flatten(tree))
    return config


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Applies ``config.a.b=value`` (or ``--config.a.b=value``) in place.

    Values are parsed as Python literals and must match the field's existing type
    (an int may fill a float field); unknown fields and values outside ``choices()`` are an
    error naming the field.
    """
    fields = []
    for item in overrides:
        text = item.removeprefix("--")
        if "=" not in text or not text.startswith("config."):
            raise ValueError(f"override {item!r} must look like --config.section.field=value")
        dotted, raw = text[len("config."):].split("=", 1)
        node = config
        *parents, leaf = dotted.split(".")
        for name in parents:
            if name not in node:
                raise ValueError(f"unknown config section {name!r} in {item!r}")
            node = node[name]
        if leaf not in node:
            raise ValueError(f"unknown config field {dotted!r}; fields: {sorted(node.keys())}")
        node[leaf] = _parse(raw, node[leaf], dotted)
        fields.append(dotted)
    validate(config, fields)


def _parse(raw: str, current, name: str):
    if isinstance(current, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError) as err:
        raise ValueError(f"cannot parse {raw!r} for config.{name}") from err
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ValueError(f"config.{name} expects True/False, got {raw!r}")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, tuple) and isinstance(value, str | list):
        return (value,) if isinstance(value, str) else tuple(value)
    if current is not None and not isinstance(value, type(current)):
        raise ValueError(
            f"config.{name} expects {type(current).__name__}, got {type(value).__name__}"
        )
    return value
