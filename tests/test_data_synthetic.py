"""The embedded synthetic corpus: determinism, speaker-independent splits, learnable but hard."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hrf_jax.audio import logmel_np
from hrf_jax.data import ensure_prepared, load_dataset, prepare
from hrf_jax.data.synthetic import CLASS_NAMES, SyntheticConfig, speaker_split, synthesize


def test_same_seed_same_bytes_other_seed_other_bytes():
    cfg = SyntheticConfig(num_utterances=8, num_speakers=6)
    a, la, sa = synthesize(cfg, 5)
    b, lb, sb = synthesize(cfg, 5)
    assert a.tobytes() == b.tobytes() and (la, sa) == (lb, sb)
    c, _, _ = synthesize(SyntheticConfig(num_utterances=8, num_speakers=6, seed=1), 5)
    assert a.tobytes() != c.tobytes()


def test_utterances_are_finite_in_range_and_1_to_6_seconds():
    cfg = SyntheticConfig(num_utterances=12, num_speakers=6)
    for i in range(12):
        wave, label, speaker = synthesize(cfg, i)
        assert 1.0 <= wave.size / 16_000 <= 6.0
        assert np.all(np.isfinite(wave)) and np.abs(wave).max() <= 1.0
        assert 0 <= label < len(CLASS_NAMES) and 0 <= speaker < 6


def test_speaker_split_is_disjoint_and_covers_all_three_splits():
    splits = [speaker_split(s, 24) for s in range(24)]
    assert splits.count("train") == 16 and splits.count("validation") == 4
    assert splits.count("test") == 4


def test_prepared_synthetic_has_balanced_classes_and_no_shared_speakers(tiny_data_dir,
                                                                      tiny_corpus):
    ds = load_dataset("synthetic", tiny_data_dir, **tiny_corpus)
    assert tiny_corpus == {"num_utterances": 96, "num_speakers": 8}
    assert ds.class_names == list(CLASS_NAMES) and ds.feature_dim == 128
    assert len(ds.train) + len(ds.validation) + len(ds.test) == 96
    # 6 train speakers x 12 utterances, classes balanced per speaker
    assert ds.class_counts("train").tolist() == [18, 18, 18, 18]
    sets = [set(s.speakers) for s in (ds.train, ds.validation, ds.test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_prepare_reuses_cache(tiny_data_dir, tiny_corpus, capsys):
    path = ensure_prepared("synthetic", tiny_data_dir, **tiny_corpus)
    mtime = (path / "prepare_report.json").stat().st_mtime
    assert prepare("synthetic", data_dir=tiny_data_dir, **tiny_corpus) == path
    assert (path / "prepare_report.json").stat().st_mtime == mtime
    assert "already prepared" in capsys.readouterr().out
    assert ensure_prepared("synthetic", tiny_data_dir, **tiny_corpus) == path
    assert (path / "prepare_report.json").stat().st_mtime == mtime


def test_logistic_regression_baseline_is_above_chance_and_below_95_percent():
    # Reduced corpus (480 utterances, 24 speakers) generated in memory to keep the test short.
    cfg = SyntheticConfig(num_utterances=480, num_speakers=24)
    x, y, split = [], [], []
    for i in range(cfg.num_utterances):
        wave, label, speaker = synthesize(cfg, i)
        f = logmel_np(wave)
        x.append(np.concatenate([f.mean(0), f.std(0)]))
        y.append(label)
        split.append(speaker_split(speaker, cfg.num_speakers))
    x, y, split = np.array(x), np.array(y), np.array(split)
    train, test = split == "train", split == "test"
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    acc = model.fit(x[train], y[train]).score(x[test], y[test])
    assert 0.40 < acc < 0.95, acc


def test_headroom_preset_six_classes_latents_and_a_local_emotional_stretch():
    from hrf_jax.data.synthetic import LATENTS, latents

    cfg = SyntheticConfig(num_utterances=12, num_speakers=6, preset="headroom",
                          min_seconds=1.2, max_seconds=2.8)
    assert cfg.class_names[-2:] == ("fear", "boredom")
    labels = [synthesize(cfg, i)[1] for i in range(12)]
    assert sorted(set(labels)) == list(range(6))
    z = latents(cfg, 3)
    assert z.shape == (len(LATENTS),) and np.all(np.isfinite(z))
    assert latents(cfg, 3).tobytes() == z.tobytes()
    # the same utterance plan without the headroom preset: other audio, same labels
    basic = SyntheticConfig(num_utterances=12, num_speakers=6)
    assert synthesize(basic, 3)[0].tobytes() != synthesize(cfg, 3)[0].tobytes()
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        SyntheticConfig(preset="harder")


def test_headroom_latents_are_what_the_label_was_drawn_from():
    # The oracle of the test-bed gate: a linear classifier on the latent parameters separates
    # the six classes far above chance (1/6) on unseen speakers.
    from hrf_jax.data.synthetic import latents, utterance_plan

    cfg = SyntheticConfig(num_utterances=600, num_speakers=24, preset="headroom")
    x = np.stack([latents(cfg, i) for i in range(600)])
    y = np.array([utterance_plan(cfg, i)[0] for i in range(600)])
    split = np.array([speaker_split(utterance_plan(cfg, i)[1], 24) for i in range(600)])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    acc = model.fit(x[split == "train"], y[split == "train"]).score(
        x[split == "test"], y[split == "test"])
    assert acc > 0.6, acc


def test_a_split_over_tfds_memory_buffer_prepares_without_tensorflow(tmp_path, monkeypatch):
    """TFDS spills a split past its in-memory buffer (1 GB) through tf.io.gfile; without
    TensorFlow preparation keeps the split in memory instead of failing after extraction.
    Here the buffer is 1 byte and TensorFlow is absent."""
    from tensorflow_datasets.core import shuffle

    from hrf_jax.data import builders

    class NoTensorflow:
        def __getattr__(self, name):
            raise ModuleNotFoundError("No module named 'tensorflow'")

    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1)
    monkeypatch.setattr(shuffle, "tf", NoTensorflow())
    monkeypatch.setattr(builders, "tensorflow_installed", lambda: False)
    path = prepare("synthetic", data_dir=tmp_path, num_utterances=12, num_speakers=6,
                   verbose=False)
    ds = load_dataset("synthetic", tmp_path, num_utterances=12, num_speakers=6)
    assert len(ds.train) + len(ds.validation) + len(ds.test) == 12
    assert shuffle.MAX_MEM_BUFFER_SIZE == 1 and path.is_dir()  # restored afterwards


def test_lexicon_words_are_spoken_syllable_by_syllable_and_lean_to_the_class():
    from hrf_jax.data import synthetic

    cfg = SyntheticConfig(num_utterances=600, num_speakers=24, preset="headroom", lexicon=5,
                          min_seconds=1.2, max_seconds=2.8)
    vocabulary = synthetic._vocabulary(cfg)
    assert len(vocabulary) == len(set(vocabulary)) == 6 * 5
    own = total = 0
    for index in range(600):
        plan = synthetic._plan(cfg, index)
        assert plan.words, index
        # the segments say the words' syllables in order (the last word may be cut short)
        spoken = [s for word in plan.words for s in vocabulary[word]]
        said, consonant = [], -1
        for _, _, kind, identity in plan.segments:
            if kind == 0:
                consonant = identity
            else:
                said.append((consonant, identity))
                consonant = -1
        assert said == spoken[:len(said)] and len(spoken) - len(said) < 3, index
        own += sum(word // cfg.lexicon == plan.label for word in plan.words)
        total += len(plan.words)
        shares = synthetic.latents(cfg, index)[len(synthetic.LATENTS):]
        assert shares.shape == (6,) and np.isclose(shares.sum(), 1.0)
    # half drawn from the class's own list, the rest uniformly: 0.5 + 0.5 / 6 of its own
    assert abs(own / total - (0.5 + 0.5 / 6)) < 0.03, own / total


def test_lexicon_keeps_the_utterance_plan_changes_the_audio_and_zero_is_no_words():
    from hrf_jax.data import synthetic

    plain = SyntheticConfig(num_utterances=12, num_speakers=6, preset="headroom")
    words = SyntheticConfig(num_utterances=12, num_speakers=6, preset="headroom", lexicon=8)
    a, la, sa = synthesize(plain, 4)
    b, lb, sb = synthesize(words, 4)
    assert (la, sa) == (lb, sb) and a.tobytes() != b.tobytes()
    assert synthetic._plan(plain, 4).words == []
    assert synthetic.latents(plain, 0).size == len(synthetic.LATENTS)
    assert synthetic.latents(words, 0).size == len(synthetic.LATENTS) + 6
    with pytest.raises(ValueError, match="lexicon must be >= 0"):
        SyntheticConfig(lexicon=-1)
    # no words is the corpus as prepared before the option existed: the same folder
    from hrf_jax.data.preparation import config_name
    assert config_name("synthetic_headroom", lexicon=0) == "default"
    assert config_name("synthetic_headroom", lexicon=40) != "default"



def test_spoken_cues_are_the_stretch_and_the_neutral_voice_with_the_speakers_offsets():
    from hrf_jax.data import synthetic

    cfg = SyntheticConfig(num_utterances=24, num_speakers=6, preset="headroom", lexicon=4)
    for index in (0, 7):
        cues = synthetic.spoken_cues(cfg, index)
        plan = synthetic._plan(cfg, index)
        offsets = synthetic._speaker_offsets(cfg, plan.speaker)
        drawn = synthetic.latents(cfg, index)
        n = len(synthetic.LATENTS)
        assert np.allclose(cues["stretch"] - [offsets[k] for k in synthetic.LATENTS], drawn[:n])
        assert np.allclose(cues["words"], drawn[n:])
        assert not np.allclose(cues["stretch"], cues["neutral"])
        syllables = sum(kind == 1 for _, _, kind, _ in plan.segments)
        assert cues["realized"][0] == pytest.approx(syllables / (plan.n / 16_000))
        assert 0 <= cues["realized"][1] <= 1
    with pytest.raises(ValueError, match="headroom preset"):
        synthetic.spoken_cues(SyntheticConfig(), 0)


def test_flat_cues_carry_no_class_and_unknown_names_are_refused():
    from hrf_jax.data.synthetic import LATENTS, latents, utterance_plan

    def class_means(cfg: SyntheticConfig, name: str) -> np.ndarray:
        x = np.array([latents(cfg, i)[LATENTS.index(name)] for i in range(600)])
        y = np.array([utterance_plan(cfg, i)[0] for i in range(600)])
        return np.array([x[y == c].mean() for c in range(6)])

    plain = SyntheticConfig(num_utterances=600, num_speakers=24, preset="headroom")
    flat = SyntheticConfig(num_utterances=600, num_speakers=24, preset="headroom",
                           flat="f0_st, rate")
    assert flat.flat_cues == ("f0_st", "rate")
    assert np.ptp(class_means(plain, "f0_st")) > 4.0  # sad -2 ... fear +5.5 semitones
    assert np.ptp(class_means(flat, "f0_st")) < 0.8  # spread 1.8 / sqrt(100) per class
    assert np.ptp(class_means(flat, "level_db")) > 5.0  # the others keep their profiles
    with pytest.raises(ValueError, match="unknown emotion parameter"):
        SyntheticConfig(flat="f0_st,pitch")
