"""Host-side SER metrics agree with scikit-learn on random predictions."""

import numpy as np
import pytest
from sklearn import metrics as skm

from hrf_jax.metrics import (
    bootstrap_ua_ci,
    classification_metrics,
    mean_std,
    participant_vote,
)


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 8))
    labels = rng.integers(0, num_classes, 200)
    preds = np.where(rng.random(200) < 0.4, labels, rng.integers(0, num_classes, 200))
    got = classification_metrics(labels, preds, num_classes)
    assert got["wa"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert got["ua"] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro"))
    assert got["weighted_f1"] == pytest.approx(skm.f1_score(labels, preds, average="weighted"))
    np.testing.assert_array_equal(
        got["confusion"], skm.confusion_matrix(labels, preds, labels=range(num_classes))
    )


def test_absent_class_is_left_out_of_ua_like_sklearn():
    labels = np.array([0, 0, 1, 1])
    preds = np.array([0, 1, 1, 1])
    got = classification_metrics(labels, preds, 3)
    assert got["ua"] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro"))


def test_out_of_range_class_is_an_error():
    with pytest.raises(ValueError, match="class ids"):
        classification_metrics(np.array([0, 3]), np.array([0, 1]), 3)


def test_participant_vote_majority_and_tie_break():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7],   # p1: 2 votes for class 1
                      [0.6, 0.4], [0.1, 0.9]])               # p2: tie, mean prob favours 1
    groups = ["p1", "p1", "p1", "p2", "p2"]
    labels = np.array([1, 1, 1, 0, 0])
    names, p_labels, p_preds = participant_vote(probs, groups, labels)
    assert names == ["p1", "p2"]
    np.testing.assert_array_equal(p_labels, [1, 0])
    np.testing.assert_array_equal(p_preds, [1, 1])


def test_participant_with_mixed_labels_is_an_error():
    with pytest.raises(ValueError, match="participant p1"):
        participant_vote(np.ones((2, 2)) / 2, ["p1", "p1"], np.array([0, 1]))


def test_mean_std():
    assert mean_std([0.5]) == (0.5, 0.0)
    mean, std = mean_std([0.4, 0.6])
    assert mean == pytest.approx(0.5) and std == pytest.approx(np.std([0.4, 0.6], ddof=1))


def test_bootstrap_ua_interval_holds_the_ua_and_shrinks_with_more_utterances():
    rng = np.random.default_rng(0)
    widths = []
    for n in (80, 2000):
        labels = rng.integers(0, 4, n)
        preds = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 4, n))
        low, high = bootstrap_ua_ci(labels, preds, 4)
        ua = classification_metrics(labels, preds, 4)["ua"]
        assert low <= ua <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # about 1/sqrt(25) as wide
    perfect = np.arange(40) % 4
    assert bootstrap_ua_ci(perfect, perfect, 4) == (1.0, 1.0)
