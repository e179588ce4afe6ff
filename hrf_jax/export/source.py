"""What an export starts from: the deployable plain model and the JAX model to check it against."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax

from hrf_jax.reparam import fold_batchnorm, hrf_paths, merge_hrf
from hrf_jax.run import Run


@dataclasses.dataclass
class Source:
    """The merged (and BatchNorm-folded) model of a run, and the run's own model."""

    run: Run
    model: Any  # plain model (fold_bn=True where folded)
    variables: dict[str, Any]
    reference_model: Any  # the model of the checkpoint (HRF, BatchNorm unfolded)
    reference_variables: dict[str, Any]
    checkpoint: str  # "best" (training workdir) or "deploy" (deploy folder)
    hrf_layers: int
    folded_bn: bool

    @property
    def info(self) -> dict[str, Any]:
        """The run's ``run_info``: class names, feature_dim, frame rate, normalisation."""
        return self.run.info

    @property
    def path(self) -> str:
        return str(self.run.path.absolute())

    @functools.cached_property
    def dataset(self) -> Any:
        """The run's prepared corpus, opened on first use."""
        return self.run.dataset()

    @property
    def model_config(self) -> dict[str, Any]:
        """The ``model`` section of the run's config, as JSON values."""
        return json.loads(self.run.config.model.to_json())


def load_source(workdir: str | os.PathLike | None = None,
                checkpoint: str | os.PathLike | None = None) -> Source:
    """Merged (and BatchNorm-folded) variables of a workdir's best checkpoint or a deploy dir."""
    if (workdir is None) == (checkpoint is None):
        raise ValueError("give exactly one of --workdir (training run) or --checkpoint "
                         "(deploy folder written by `hrf-jax merge`)")
    which = "best" if workdir is not None else "deploy"
    run = Run.load(workdir if workdir is not None else checkpoint)
    ref_model, ref_vars = run.model(plain=which == "deploy"), run.variables(which)
    deploy = merge_hrf(ref_vars)
    folded = "batch_stats" in deploy and run.can_fold_bn
    if folded:
        deploy = fold_batchnorm(deploy)
        if "batch_stats" in deploy:
            raise ValueError(f"{run.path}: BatchNorm statistics left after folding: "
                             f"{jax.tree_util.tree_structure(deploy['batch_stats'])}")
    model = run.model(plain=True, fold_bn=folded)
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), *run.example_inputs())
    want = jax.tree_util.tree_structure(template)
    got = jax.tree_util.tree_structure(deploy)
    if want != got:
        raise ValueError(f"{run.path}: merged variables do not fit the plain model "
                         f"(fold_bn={folded}): expected {want}, got {got}")
    return Source(run, model, jax.device_get(deploy), ref_model, ref_vars, which,
                  len(hrf_paths(ref_vars)), folded)
