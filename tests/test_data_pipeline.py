"""TrainLoader / EvalLoader: determinism, exact resume, masks, and full coverage."""

import numpy as np
import pytest

from hrf_jax.data import EvalLoader, TrainLoader, load_dataset


@pytest.fixture(scope="module")
def ds(tiny_data_dir, tiny_corpus):
    return load_dataset("synthetic", tiny_data_dir, **tiny_corpus)


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_dataset_contract(ds):
    ex = ds.train[0]
    assert ex["feats"].dtype == np.float32 and ex["feats"].shape[1] == ds.feature_dim
    assert isinstance(ex["label"], int) and isinstance(ex["speaker"], str)
    assert {"group", "id"} <= set(ex)
    assert ds.class_counts("train").sum() == len(ds.train)


def test_fixed_split_corpus_rejects_folds(ds, tiny_corpus):
    with pytest.raises(ValueError, match="fixed"):
        load_dataset("synthetic", ds.path.parents[2], fold=1, **tiny_corpus)


def test_train_loader_same_seed_same_batches_other_epoch_other_order(ds):
    a = list(TrainLoader(ds.train, batch_size=4, max_frames=120, seed=3).epoch(0))
    b = list(TrainLoader(ds.train, batch_size=4, max_frames=120, seed=3).epoch(0))
    c = list(TrainLoader(ds.train, batch_size=4, max_frames=120, seed=3).epoch(1))
    assert _same(a, b)
    assert not _same(a, c)


def test_train_loader_resume_equals_skipping(ds):
    loader = TrainLoader(ds.train, batch_size=4, max_frames=120, seed=0)
    full = list(loader.epoch(2))
    assert len(full) == len(loader) == len(ds.train) // 4
    assert _same(list(loader.epoch(2, start=3)), full[3:])


def test_train_loader_resume_does_not_load_skipped_batches(ds):
    loaded = []

    class Counting:
        labels = ds.train.labels

        def __len__(self):
            return len(ds.train)

        def __getitem__(self, i):
            loaded.append(i)
            return ds.train[i]

    loader = TrainLoader(Counting(), batch_size=4, max_frames=50, seed=0)
    batches = list(loader.epoch(0, start=len(loader) - 1))
    assert len(batches) == 1 and len(loaded) == 4


def test_train_batch_shapes_masks_crops_and_padding(ds):
    loader = TrainLoader(ds.train, batch_size=4, max_frames=150, seed=1)
    order = loader.order(0)
    batch = next(iter(loader.epoch(0)))
    assert batch["feats"].shape == (4, 150, ds.feature_dim) and batch["feats"].dtype == np.float32
    assert batch["mask"].dtype == bool and batch["label"].dtype == np.int32
    for row, i in enumerate(order[:4]):
        n = min(int(ds.train.lengths[i]), 150)
        assert batch["mask"][row].sum() == n and batch["mask"][row, :n].all()
        assert not batch["feats"][row, n:].any()
        assert batch["label"][row] == ds.train.labels[i]
        full = ds.train[int(i)]["feats"]
        # A random crop is a contiguous window of the utterance.
        starts = [s for s in range(full.shape[0] - n + 1)
                  if np.array_equal(full[s:s + n], batch["feats"][row, :n])]
        assert starts


def test_balanced_sampling_evens_out_classes():
    class Skewed:
        labels = np.array([0] * 90 + [1] * 10)

        def __len__(self):
            return 100

    counts = np.zeros(2)
    loader = TrainLoader(Skewed(), batch_size=10, balanced=True)
    for epoch in range(20):
        counts += np.bincount(Skewed.labels[loader.order(epoch)], minlength=2)
    assert 0.4 < counts[1] / counts.sum() < 0.6


def test_eval_loader_covers_every_utterance_once_with_few_shapes(ds):
    ev = EvalLoader(ds.test, batch_size=3, buckets=(100, 200, 400), chunk_frames=250)
    frames = {}
    shapes = set()
    for batch in ev:
        shapes.add(batch["feats"].shape)
        assert batch["feats"].shape[0] == 3
        assert not batch["mask"][~batch["valid"]].any()
        for row in np.flatnonzero(batch["valid"]):
            idx = int(batch["index"][row])
            frames[idx] = frames.get(idx, 0) + int(batch["mask"][row].sum())
            assert batch["label"][row] == ds.test.labels[idx]
            assert batch["mask"][row].sum() <= 250
    assert frames == {i: int(n) for i, n in enumerate(ds.test.lengths)}
    assert {s[1] for s in shapes} <= {100, 200, 400}


def test_eval_loader_chunks_are_the_utterance_in_order(ds):
    i = int(np.argmax(ds.test.lengths))
    ev = EvalLoader(ds.test, batch_size=2, buckets=(100,), chunk_frames=100)
    pieces = [b["feats"][r][b["mask"][r]] for b in ev for r in np.flatnonzero(b["valid"])
              if b["index"][r] == i]
    np.testing.assert_array_equal(np.concatenate(pieces), ds.test[i]["feats"])
