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


# The cue ladder's rungs: what an oracle on the generator's values is given, from the gate's
# oracle down towards what a log-Mel model can use.
LADDER = (
    ("latents", "the emotion parameters drawn (the gate's oracle)"),
    ("with_speaker", "as the emotional stretch speaks them: with the speaker's offsets"),
    ("contrast", "the stretch minus the neutral voice around it (no speaker knowledge)"),
    ("no_perturbation", "without jitter and shimmer (cycle-to-cycle, averaged away by a "
                        "25 ms log-Mel frame)"),
    ("realized", "rate and pause as the syllables and pauses drawn, not their odds"),
    ("no_f0", "without the F0 contour (f0_st, f0_range, decl, peak_pos)"),
)
_PERTURBATION = ("jitter", "shimmer")
_F0 = ("f0_st", "f0_range", "decl", "peak_pos")


def cue_ladder(synthetic_config: Any) -> dict[str, Any]:
    """Test UA of logistic regression on each rung of ``LADDER``, on the speaker-independent
    splits of the corpus ``synthetic_config`` describes (headroom preset; nothing is
    rendered). Each rung gives the classifier less than the one above it, so the rung where
    the UA falls to a network's suggests which cues the network leaves unused (an ablation
    with ``SyntheticConfig.flat`` tests it). With a lexicon,
    every rung also gets the utterance's word shares (what is said is audible)."""
    from hrf_jax.data.synthetic import LATENTS, latents, speaker_split, spoken_cues, utterance_plan

    cfg = synthetic_config
    names = list(LATENTS)
    keep = [i for i, k in enumerate(names) if k not in _PERTURBATION]
    no_f0 = [j for j, i in enumerate(keep) if names[i] not in _F0]
    rate, pause = names.index("rate"), names.index("pause")
    rows: dict[str, list[np.ndarray]] = {name: [] for name, _ in LADDER}
    labels, splits = [], []
    for index in range(cfg.num_utterances):
        label, speaker = utterance_plan(cfg, index)
        cues = spoken_cues(cfg, index)
        contrast = cues["stretch"] - cues["neutral"]
        realized = contrast.copy()
        realized[[rate, pause]] = cues["realized"]
        words = cues["words"]
        for name, values in (("latents", latents(cfg, index)[:len(names)]),
                             ("with_speaker", cues["stretch"]), ("contrast", contrast),
                             ("no_perturbation", contrast[keep]),
                             ("realized", realized[keep]),
                             ("no_f0", realized[keep][no_f0])):
            rows[name].append(np.concatenate([values, words]))
        labels.append(label)
        splits.append(speaker_split(speaker, cfg.num_speakers))
    labels, splits = np.asarray(labels), np.asarray(splits)

    def part(x: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
        return x[splits == split], labels[splits == split]

    out = {}
    for name, _ in LADDER:
        x = np.stack(rows[name])
        out[name] = _fit_select(part(x, "train"), part(x, "validation"), part(x, "test"))
    return out
