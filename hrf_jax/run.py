"""A run folder: the one place that knows its files and rebuilds its model, variables and data.

A training workdir holds ``config.json`` (the ml_collections config), ``run_info.json`` (class
names, feature size, frame rate, normalisation statistics), ``metrics.jsonl``, ``final.json``,
orbax checkpoints under ``checkpoints/`` (last N) and ``best/`` (selected on validation data),
and after ``hrf-jax merge`` a ``deploy/`` folder. A deploy folder holds ``deploy.json`` (the
plain model's config, the run info and the merge report) and ``variables/``; it is a run of its
own, so a folder copied elsewhere still loads with ``Run.load``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from hrf_jax.config import config_from_dict, default_config, load_config, parse_arch

CONFIG_FILE = "config.json"
RUN_INFO = "run_info.json"
METRICS_LOG = "metrics.jsonl"
FINAL = "final.json"
LAST_DIR = "checkpoints"
BEST_DIR = "best"
DEPLOY_DIR = "deploy"
DEPLOY_INFO = "deploy.json"
DEPLOY_VARIABLES = "variables"
CHECKPOINTS = ("best", "last", "deploy")
_TEMPLATE_FRAMES = 16  # every backbone accepts 16 frames; shapes of variables do not depend on T


def check_same_run(path: str | Path, config: ml_collections.ConfigDict) -> None:
    """Raises ``ValueError`` if ``path`` holds a run whose data, model or optimizer config
    differs from ``config`` (a workdir with no saved config passes)."""
    saved = Path(path) / CONFIG_FILE
    if not saved.is_file():
        return
    old, new = json.loads(saved.read_text()), json.loads(config.to_json())
    defaults = json.loads(default_config().to_json())
    for section in ("dataset", "model", "optimizer"):
        # a config saved before a field existed holds that field's default
        if {**defaults[section], **old.get(section, {})} != new.get(section):
            raise ValueError(
                f"{path} holds a run with a different {section} config; use a new "
                f"--workdir (saved: {old.get(section)}, now: {new.get(section)})")


@dataclasses.dataclass
class Run:
    """A training workdir or a deploy folder.

    ``config``: the run's ``ConfigDict``; ``info``: the ``run_info.json`` dict (``{}`` until
    the dataset is opened by ``fit``); ``deploy_meta``: ``deploy.json`` when ``path`` is a
    deploy folder, else ``None``.
    """

    path: Path
    config: ml_collections.ConfigDict
    info: dict[str, Any]
    deploy_meta: dict[str, Any] | None = None

    # ------------------------------------------------------------------ open / create

    @classmethod
    def load(cls, path: str | Path) -> Run:
        """A finished or running training workdir, or a deploy folder written by merge."""
        path = Path(path)
        if (path / DEPLOY_INFO).is_file() and not (path / CONFIG_FILE).is_file():
            meta = json.loads((path / DEPLOY_INFO).read_text())
            return cls(path, config_from_dict(meta["config"]), meta["run_info"], meta)
        for name in (CONFIG_FILE, RUN_INFO):
            if not (path / name).is_file():
                raise FileNotFoundError(
                    f"{path / name} not found: is {path} a training workdir, or a deploy "
                    f"folder written by `hrf-jax merge`?")
        info = json.loads((path / RUN_INFO).read_text())
        return cls(path, load_config(str(path / CONFIG_FILE)), info)

    @classmethod
    def create(cls, path: str | Path, config: ml_collections.ConfigDict) -> Run:
        """Starts (or continues) a training run; refuses a workdir of another data/model."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        check_same_run(path, config)
        info = json.loads((path / RUN_INFO).read_text()) if (path / RUN_INFO).is_file() else {}
        return cls(path, config, info)

    def save_config(self) -> None:
        write_run_file(self.path / CONFIG_FILE, self.config.to_json(indent=2))

    def save_info(self, ds: Any) -> None:
        """What inference needs besides the weights: classes, feature size, normalisation."""
        self.info = {
            "class_names": list(ds.class_names),
            "feature_dim": int(ds.feature_dim),
            "frame_rate": float(ds.frame_rate),
            "normalize": self.config.dataset.normalize,
            "mean": ds.stats.mean.tolist() if ds.stats is not None else None,
            "std": ds.stats.std.tolist() if ds.stats is not None else None,
        }
        write_run_file(self.path / RUN_INFO, json.dumps(self.info, indent=2))

    # ------------------------------------------------------------------ paths and facts

    @property
    def is_deploy(self) -> bool:
        return self.deploy_meta is not None

    @property
    def metrics_log(self) -> Path:
        return self.path / METRICS_LOG

    @property
    def final(self) -> Path:
        return self.path / FINAL

    @property
    def last_dir(self) -> Path:
        return self.path / LAST_DIR

    @property
    def best_dir(self) -> Path:
        return self.path / BEST_DIR

    @property
    def deploy_dir(self) -> Path:
        """Where merge writes the deploy folder (the folder itself for a deploy run)."""
        return self.path if self.is_deploy else self.path / DEPLOY_DIR

    @property
    def class_names(self) -> list[str]:
        return list(self._info("class_names"))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def feature_dim(self) -> int:
        return int(self._info("feature_dim"))

    @property
    def group_vote(self) -> bool:
        """Whether the corpus is scored by a vote per group (participant) as well."""
        from hrf_jax.data.registry import CORPORA

        corpus = CORPORA.get(self.config.dataset.name)
        return bool(corpus and corpus.group_vote)

    def _info(self, key: str) -> Any:
        if key not in self.info:
            raise FileNotFoundError(f"{self.path / RUN_INFO} has no {key!r}: the run has not "
                                    "opened its dataset yet")
        return self.info[key]

    # ------------------------------------------------------------------ model and variables

    @property
    def can_fold_bn(self) -> bool:
        """Whether the backbone has a ``fold_bn`` option (BatchNorm folded into a conv)."""
        from hrf_jax.models import get_config

        cfg = get_config(self.config.model.backbone, self.config.model.size)
        return "fold_bn" in {f.name for f in dataclasses.fields(cfg)}

    def model(self, *, plain: bool = False, fold_bn: bool = False) -> Any:
        """The run's model; ``plain=True`` drops HRF (the deploy model), ``fold_bn=True``
        builds it without BatchNorm (variables through ``fold_batchnorm``)."""
        return model_from_config(self.config.model, self.num_classes,
                                 plain=plain or self.is_deploy, fold_bn=fold_bn)

    def example_inputs(self, batch: int = 1, frames: int = _TEMPLATE_FRAMES
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Zero ``feats (B, T, F)`` and an all-true ``mask (B, T)`` for init and tracing."""
        return (np.zeros((batch, frames, self.feature_dim), np.float32),
                np.ones((batch, frames), bool))

    def variables(self, which: str = "best") -> dict[str, Any]:
        """``{"params", "batch_stats"?}`` of the ``best``/``last`` checkpoint (HRF model) or
        of the ``deploy`` folder (plain model)."""
        if which not in CHECKPOINTS:
            raise ValueError(f"which must be one of {CHECKPOINTS}, got {which!r}")
        if self.is_deploy and which != "deploy":
            raise ValueError(f"{self.path} is a deploy folder: it holds only 'deploy' variables")
        if which == "deploy":
            return self._deploy_variables()
        from hrf_jax.checkpoint import restore_state

        state, _ = restore_state(self.best_dir if which == "best" else self.last_dir,
                                 self.state_template())
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        return variables

    def state_template(self) -> Any:
        """Shapes of the ``TrainState`` a checkpoint of this run holds (nothing computed)."""
        from hrf_jax.train import create_state, make_optimizer

        model, tx = self.model(), make_optimizer(self.config.optimizer, 2)
        feats, mask = self.example_inputs()
        return jax.eval_shape(lambda: create_state(model, tx, jax.random.PRNGKey(0), feats, mask))

    def _deploy_variables(self) -> dict[str, Any]:
        import orbax.checkpoint as ocp

        folder = self.deploy_dir / DEPLOY_VARIABLES
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} not found; run `hrf-jax merge --workdir "
                                    f"{self.path}` first")
        model = self.model(plain=True)
        feats, mask = self.example_inputs()
        template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), feats, mask))
        return ocp.StandardCheckpointer().restore(folder.absolute(), template)

    # ------------------------------------------------------------------ data

    def dataset(self, *, prepare: bool = False) -> Any:
        """The run's corpus and fold (``prepare=True``: prepare it first where possible)."""
        return open_dataset(self.config.dataset, prepare=prepare)


def is_main_process() -> bool:
    """Whether this process writes the run files (process 0; the only one on one host)."""
    return jax.process_index() == 0


def write_run_file(path: Path, text: str) -> None:
    """Process 0 writes ``path`` whole (a temporary file renamed), so another process that
    reads it meanwhile sees the old or the new file, never half of one."""
    if not is_main_process():
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def model_from_config(cfg: ml_collections.ConfigDict, num_classes: int, *, plain: bool = False,
                      fold_bn: bool = False) -> Any:
    """``build_model`` from a config's ``model`` section (``plain=True``: no HRF)."""
    from hrf_jax.models import build_model

    extra = {**parse_arch(cfg.get("arch", "")), **({"fold_bn": True} if fold_bn else {})}
    return build_model(
        cfg.backbone, cfg.size, num_classes=num_classes, reference=cfg.get("reference", False),
        hrf_ratio=0 if plain else cfg.hrf_ratio,
        hrf_targets=tuple(cfg.hrf_targets), hrf_depth=cfg.hrf_depth, hrf_bias=cfg.hrf_bias,
        hrf_init=cfg.hrf_init, hrf_base=cfg.hrf_base, hrf_norm=cfg.get("hrf_norm", "none"),
        dropout=cfg.dropout, **extra,
    )


def dataset_options(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Keyword options of ``prepare``/``load_dataset`` set in a ``dataset`` section."""
    opts = {"manifest": cfg.manifest or None, "num_utterances": cfg.num_utterances or None,
            "num_speakers": cfg.num_speakers or None, "lexicon": cfg.get("lexicon", 0) or None,
            "flat": cfg.get("flat", "") or None,
            "difficulty": cfg.difficulty if cfg.get("difficulty", -1.0) >= 0 else None}
    return {k: v for k, v in opts.items() if v is not None}


def open_dataset(cfg: ml_collections.ConfigDict, *, prepare: bool = False) -> Any:
    """Opens the corpus and fold of a ``dataset`` section; ``prepare=True`` prepares it first
    when it can be (the synthetic corpus, or a ``manual_dir``/``manifest`` is given)."""
    from hrf_jax.data import ensure_prepared, load_dataset
    from hrf_jax.data.registry import CORPORA

    data_dir = cfg.data_dir or None
    options = dataset_options(cfg)
    if prepare and (CORPORA[cfg.name].needs is None or cfg.manual_dir or cfg.manifest):
        prep_opts = {k: v for k, v in options.items() if k != "manifest"}
        ensure_prepared(cfg.name, data_dir, manual_dir=cfg.manual_dir or None,
                        manifest=cfg.manifest or None, **prep_opts)
    return load_dataset(cfg.name, data_dir, fold=None if cfg.fold < 0 else cfg.fold,
                        protocol=cfg.protocol or None, normalize=cfg.normalize, **options)

