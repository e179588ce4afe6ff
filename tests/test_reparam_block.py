"""deHRF on a small Transformer encoder block, pre-LN and post-LN, randomised parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict

from hrf_jax import (
    FeedForward,
    HRFSpec,
    count_params,
    expand_hrf,
    hrf_paths,
    merge_hrf,
    verify_equivalence,
)


class EncoderBlock(nn.Module):
    """Self-attention + FFN with HRF in the FFN's first linear; pre- or post-LN."""

    d: int = 16
    heads: int = 4
    ffn: int = 32
    hrf_ratio: int = 0
    hrf_depth: int = 1
    pre_ln: bool = True

    @nn.compact
    def __call__(self, x, mask, train: bool = False):
        attn_mask = nn.make_attention_mask(mask, mask)
        attn = nn.MultiHeadDotProductAttention(self.heads, deterministic=True)
        ffn = FeedForward(self.ffn, activation=nn.swish, dropout=0.1,
                          hrf=HRFSpec(ratio=self.hrf_ratio, depth=self.hrf_depth))
        if self.pre_ln:
            h = nn.LayerNorm(name="ln_attn")(x)
            x = x + attn(h, h, mask=attn_mask)
            # HRF sits after the LayerNorm, inside the residual branch
            x = x + ffn(nn.LayerNorm(name="ln_ffn")(x), train=train)
        else:
            x = nn.LayerNorm(name="ln_attn")(x + attn(x, x, mask=attn_mask))
            x = nn.LayerNorm(name="ln_ffn")(x + ffn(x, train=train))
        return x


def randomise(tree, seed=0):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(k, x.shape) * 0.3 for k, x in zip(keys, leaves, strict=True)]
    )


@pytest.mark.parametrize("pre_ln", [True, False])
@pytest.mark.parametrize("ratio,depth", [(2, 1), (4, 1), (8, 1), (4, 2)])
def test_merged_block_equals_hrf_block(pre_ln, ratio, depth):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 10, 16))
    mask = jnp.arange(10)[None, :] < jnp.array([[10], [7], [3]])
    hrf = EncoderBlock(hrf_ratio=ratio, hrf_depth=depth, pre_ln=pre_ln)
    plain = EncoderBlock(pre_ln=pre_ln)
    variables = randomise(hrf.init(jax.random.PRNGKey(1), x, mask))
    # every bias is nonzero after randomising, so a bias-folding bug would show
    assert all(np.all(np.asarray(b) != 0) for b in jax.tree_util.tree_leaves(variables))
    report = verify_equivalence(hrf, plain, variables, x, mask, train=False)
    assert report["max_rel_err"] <= 1e-5, report
    assert report["structure_match"]
    assert report["params_merged"] == report["params_plain"]
    assert report["params_hrf"] > report["params_plain"]
    assert report["hrf_layers"] == 1
    assert hrf_paths(variables) == ["params/FeedForward_0/fc1"]


def test_merge_leaves_other_collections_untouched():
    variables = {
        "params": {"fc1": {"hrf_0": {"kernel": np.ones((2, 4)), "bias": np.ones(4)},
                           "kernel": np.ones((4, 3)), "bias": np.zeros(3)}},
        "batch_stats": {"bn": {"mean": np.arange(3.0), "var": np.ones(3)}},
    }
    merged = merge_hrf(variables)
    assert merged["batch_stats"]["bn"]["mean"] is variables["batch_stats"]["bn"]["mean"]
    np.testing.assert_allclose(merged["params"]["fc1"]["kernel"], np.full((2, 3), 4.0))
    np.testing.assert_allclose(merged["params"]["fc1"]["bias"], np.full(3, 4.0))
    assert count_params(merged) == 2 * 3 + 3 + 3 + 3


def test_transforms_keep_frozendicts_and_empty_collections():
    variables = FrozenDict({
        "params": {"fc1": {"hrf_0": {"kernel": np.ones((2, 4)), "bias": np.ones(4)},
                           "kernel": np.ones((4, 3)), "bias": np.zeros(3)}},
        "intermediates": {},
    })
    merged = merge_hrf(variables)
    assert type(merged) is FrozenDict and merged["intermediates"] == {}
    expanded = expand_hrf(merged, jax.random.PRNGKey(0), 2)
    assert type(expanded) is FrozenDict
    assert hrf_paths(expanded) == ["params/fc1"]
