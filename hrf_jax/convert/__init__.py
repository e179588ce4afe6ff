"""Converters from reference PyTorch implementations to ``hrf_jax`` models.

Each converter takes the reference's ``state_dict`` (a mapping of its parameter names to
arrays, or a checkpoint path when torch is installed), infers the architecture from names and
shapes, and returns ``(model, variables)`` whose ``model.apply(variables, x, mask)`` reproduces
the reference's eval-mode output. torch is never needed for a mapping of numpy arrays.
"""

from __future__ import annotations

from hrf_jax.lazy import lazy_exports

_EXPORTS = {
    "StateDict": "hrf_jax.convert.state_dict",
    "from_speechformer_official": "hrf_jax.convert.speechformer",
    "from_espnet_conformer": "hrf_jax.convert.espnet",
    "from_fairseq_convtransformer": "hrf_jax.convert.fairseq",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
