"""Padding never changes a prediction: appended masked frames leave the logits unchanged."""

import numpy as np
import pytest
from models_testutil import FRAMES, compiled, inputs, random_variables, rel_err

from hrf_jax.models import BACKBONES


@pytest.mark.parametrize("reference", [False, True], ids=["default", "reference"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_appended_padding_leaves_logits_unchanged(backbone, reference):
    # chains on every target (their merged model is the plain one, test_models_reparam), so
    # padding reaches every kind of layer; the reference presets honour masks too (each
    # utterance of a batch gives what the reference gives it alone)
    model, fn = compiled(backbone, "light", 4, "all", **({"reference": True} if reference else {}))
    frames, real = FRAMES["light"], FRAMES["light"] * 2 // 3
    feats, mask = inputs(2, frames, lengths=[frames, real])
    variables = random_variables(model, feats, mask)
    junk = 1e3 * np.random.default_rng(5).standard_normal((2, 23, feats.shape[-1]))
    padded = np.concatenate([feats, junk.astype(np.float32)], axis=1)
    padded_mask = np.pad(mask, [(0, 0), (0, 23)])
    # frames real.. of row 1 were padding already: scramble them too
    padded[1, real:frames] = -7e2
    assert rel_err(fn(variables, feats, mask), fn(variables, padded, padded_mask)) <= 1e-5
