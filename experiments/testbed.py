"""The two reference classifiers of the test-bed gate (issue #13): a probe that sees only
utterance-level statistics, and an oracle that sees the generator's own parameters.

- ``probe_ua``: logistic regression on the mean and standard deviation over frames of each
  (corpus-normalised) log-Mel bin, the features a model sees. A test bed where this probe
  comes close to the light model rewards nothing that a Transformer adds.
- ``oracle_ua``: logistic regression on the emotion parameters the synthetic generator drew
  each utterance from (``hrf_jax.data.synthetic.latents``), before the speaker's offsets, the
  channel and the noise. It bounds what can be learnt from audio on this corpus: a large
  model close to it leaves no room for a light model to improve.

Both pick the inverse regularisation strength C on the validation split (speaker-independent)
and report test UA, the same splits the networks are scored on. Needs scikit-learn (the
``dev`` extra).
"""

from __future__ import annotations

from typing import Any

import numpy as np

C_GRID = (0.01, 0.1, 1.0, 10.0)


def _fit_select(train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray],
                test: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Standardised multinomial logistic regression, C chosen on validation UA."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as err:
        raise ImportError("the test-bed gate needs scikit-learn: pip install -e '.[dev]'"
                          ) from err
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best = None
    for c in C_GRID:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
        model.fit(*train)
        val_ua = balanced_accuracy_score(validation[1], model.predict(validation[0]))
        if best is None or val_ua > best[0]:
            best = (val_ua, c, model)
    val_ua, c, model = best
    return {"ua": float(balanced_accuracy_score(test[1], model.predict(test[0]))),
            "validation_ua": float(val_ua), "C": c}


def _mean_std(source: Any) -> tuple[np.ndarray, np.ndarray]:
    rows = []
    for i in range(len(source)):
        feats = source[i]["feats"]
        rows.append(np.concatenate([feats.mean(0), feats.std(0)]))
    return np.stack(rows), np.asarray(source.labels)


def probe_ua(ds: Any) -> dict[str, Any]:
    """Test UA of the mean+std logistic-regression probe on a loaded ``Dataset``."""
    return _fit_select(_mean_std(ds.train), _mean_std(ds.validation), _mean_std(ds.test))


def oracle_ua(ds: Any, synthetic_config: Any) -> dict[str, Any]:
    """Test UA of logistic regression on the generator's latent emotion parameters; ``ds`` a
    loaded synthetic corpus made with ``synthetic_config`` (utterance ids ``syn<index>``)."""
    from hrf_jax.data.synthetic import latents, utterance_plan

    def split(source: Any) -> tuple[np.ndarray, np.ndarray]:
        index = [int(str(i).removeprefix("syn")) for i in source.ids]
        planned = [utterance_plan(synthetic_config, i)[0] for i in index]
        if planned != list(source.labels):  # labels index the same class names in both
            raise ValueError(f"{synthetic_config} did not make the corpus at {ds.path}: "
                             "its utterance plan gives other labels")
        return np.stack([latents(synthetic_config, i) for i in index]), np.asarray(
            source.labels)

    return _fit_select(split(ds.train), split(ds.validation), split(ds.test))
