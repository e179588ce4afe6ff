"""Data parallelism: 4 forced host devices train to the same losses as 1 device."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    assert jax.device_count() == 4, jax.devices()
    from hrf_jax.config import default_config
    from hrf_jax.models import build_model
    from hrf_jax.train import DataParallel, create_state, make_optimizer, make_train_step
    rng = np.random.default_rng(0)
    batch = {"feats": rng.standard_normal((8, 40, 16)).astype(np.float32),
             "mask": np.arange(40)[None] < rng.integers(20, 41, 8)[:, None],
             "label": (np.arange(8) % 4).astype(np.int32)}
    model = build_model("conformer", "light", num_classes=4, hrf_ratio=2, dropout=0.0)
    tx = make_optimizer(default_config().optimizer, 20)
    losses = {}
    for n in (1, 4):
        par = DataParallel(jax.devices()[:n])
        state = par.replicate(create_state(model, tx, jax.random.PRNGKey(0),
                                           batch["feats"], batch["mask"]))
        step = make_train_step(model, tx, par)
        out = []
        for _ in range(5):
            state, stats = step(state, par.put_batch(batch))
            out.append(float(stats["loss"]))
        losses[n] = out
        if n == 4:
            shards = state.params["classifier"]["kernel"].sharding
            assert shards.is_fully_replicated
    np.testing.assert_allclose(losses[1], losses[4], rtol=2e-4, atol=2e-5)
    print("losses", losses)
""")


def test_four_devices_match_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "losses" in proc.stdout
