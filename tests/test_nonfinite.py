"""The train step flags non-finite losses, gradient norms and params in the graph, and with
``nan_policy: skip_step`` keeps the previous params and optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np

from pairuni_jax.rl import health
from tests import train_fixtures as fx


def _flags(metrics):
    return {k: float(metrics[k]) for k in health.KEYS}


def test_a_non_finite_step_is_flagged_and_its_update_skipped():
    step, state = fx.build_step(fx.grpo_config(), *fx.low_token_rewards(1, 1), skip_nonfinite=True)
    batch = fx.as_jax(fx.synthetic_batch(2))
    key = jax.random.key(0)
    fresh = jax.tree.map(np.asarray, (state.params, state.opt_state))

    updated, metrics, _ = step(jax.tree.map(jnp.copy, state), batch, key)
    assert _flags(metrics) == dict.fromkeys(health.KEYS, 0.0)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(fresh[0]), jax.tree.leaves(updated.params))
    )

    # One NaN weight in the output head: every logit row it touches, the loss and the
    # gradient go NaN.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x.at[0, 0].set(jnp.nan) if "lm_head" in jax.tree_util.keystr(path) else x,
        state.params,
    )
    poisoned = state.replace(params=params, opt_state=jax.tree.map(jnp.copy, state.opt_state))
    expected = jax.tree.map(np.asarray, (params, state.opt_state))
    kept, metrics, _ = step(poisoned, batch, key)
    assert _flags(metrics) == dict.fromkeys(health.KEYS, 1.0)
    assert int(kept.step) == 1, "the step counter moves on; the update does not"
    for a, b in zip(
        jax.tree.leaves(expected), jax.tree.leaves((kept.params, kept.opt_state)), strict=True
    ):
        np.testing.assert_array_equal(a, np.asarray(b))
