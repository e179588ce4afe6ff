"""Populations: one vmapped step for K members equals K separate runs of the train step."""

import jax
import numpy as np

from hrf_jax.config import default_config
from hrf_jax.models import build_model
from hrf_jax.population import (
    create_population,
    make_population_eval_step,
    make_population_step,
    shard_members,
    stack_states,
    unstack_state,
)
from hrf_jax.train import (
    DataParallel,
    make_eval_step,
    make_optimizer,
    make_train_step,
)

K, STEPS = 3, 3


def tiny_batch(seed: int, batch: int = 4, frames: int = 40, dim: int = 16) -> dict:
    """Random features with ragged lengths (half to all of ``frames``)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(frames // 2, frames + 1, batch)
    return {"feats": rng.standard_normal((batch, frames, dim)).astype(np.float32),
            "mask": np.arange(frames)[None] < lengths[:, None],
            "label": rng.integers(0, 4, batch).astype(np.int32)}


def test_population_matches_separate_runs():
    # dropout 0.1 stays on (train=True): the members' own rngs decide the numbers
    model = build_model("conformer", "light", num_classes=4, d_model=32, num_layers=1,
                        num_heads=2, kernel_size=7)
    # SGD, not Adam: Adam turns the rounding noise in a zero gradient (a bias before
    # BatchNorm) into full-size steps of random sign, so no tolerance would compare them
    config = default_config().optimizer
    config.name, config.lr = "sgd", 0.05  # steps large enough to tell members apart
    tx = make_optimizer(config, 10)
    parallel = DataParallel()
    keys = jax.numpy.stack([jax.random.PRNGKey(seed) for seed in range(K)])
    # each member its own data order: batch s of member m
    batches = [[tiny_batch(seed=100 * m + s) for s in range(STEPS)] for m in range(K)]
    example = batches[0][0]

    population = create_population(model, tx, keys, example["feats"], example["mask"])
    step = make_train_step(model, tx, parallel)
    singles, single_losses = [], []
    for m, state in enumerate(unstack_state(population)):
        state = parallel.replicate(state)
        losses = []
        for s in range(STEPS):
            state, stats = step(state, parallel.put_batch(batches[m][s]))
            losses.append(float(stats["loss"]))
        singles.append(state)
        single_losses.append(losses)

    population = shard_members(population, parallel)
    pop_step = make_population_step(model, tx, parallel)
    pop_losses = []
    for s in range(STEPS):
        stacked = {k: np.stack([batches[m][s][k] for m in range(K)]) for k in example}
        population, stats = pop_step(population, shard_members(stacked, parallel))
        pop_losses.append(np.asarray(stats["loss"]))

    np.testing.assert_allclose(np.stack(pop_losses, 1), single_losses, rtol=1e-5, atol=1e-6)
    assert len({round(x[0], 6) for x in single_losses}) == K  # the members do differ
    members = unstack_state(population)
    for single, member in zip(singles, members, strict=True):
        assert int(member.step) == STEPS
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
            jax.device_get(single.params), jax.device_get(member.params))
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
            jax.device_get(single.batch_stats), jax.device_get(member.batch_stats))
        np.testing.assert_array_equal(single.rng, member.rng)

    # eval: every member on one shared batch, as each separate model would score it
    probs = make_population_eval_step(model, parallel)(
        population.params, population.batch_stats, example["feats"], example["mask"])
    eval_step = make_eval_step(model, parallel)
    placed = parallel.put_batch(example)
    for m, single in enumerate(singles):
        np.testing.assert_allclose(
            probs[m], eval_step(single.params, single.batch_stats, placed["feats"],
                                placed["mask"]), rtol=1e-4, atol=1e-6)
    # stack_states inverts unstack_state
    again = stack_states(members)
    np.testing.assert_array_equal(again.step, population.step)
