"""The Pair-GRPO train step: one jitted program that runs, is deterministic, has the right gradient,
weights pairs by similarity, and learns (pytest -k learn)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from transformers import AutoTokenizer

from pairuni_jax import sharding
from pairuni_jax.data.pipeline import TINY_TOKENIZER
from pairuni_jax.models.clip import CLIP, CLIPConfig
from pairuni_jax.models.random_init import random_module
from pairuni_jax.rewards.accuracy import OptionLetterTable
from pairuni_jax.rewards.registry import RewardWeights
from pairuni_jax.rl import advantages as adv_lib
from pairuni_jax.rl import rewards as rl_rewards
from pairuni_jax.rl.rollout_data import GenerationRollouts, UnderstandingRollouts
from tests import train_fixtures as fx


def _real_rewards():
    hps = random_module(lambda: CLIP(CLIPConfig.tiny(), rngs=nnx.Rngs(0)), seed=1)
    letters = OptionLetterTable.from_tokenizer(
        AutoTokenizer.from_pretrained(TINY_TOKENIZER), vocab_size=fx.CONFIG.text.vocab_size
    )
    hps_graphdef, state = rl_rewards.reward_state(hps, letters)
    weights = RewardWeights()
    return (
        rl_rewards.understanding_reward_fn(weights),
        rl_rewards.generation_reward_fn(weights, hps_graphdef),
        state,
    )


def _on_mesh(mesh, state, batch):
    batch_sharding = jax.NamedSharding(mesh, sharding.logical_to_spec(("batch",)))
    return (
        jax.device_put(state, sharding.tree_shardings(state, mesh)),
        jax.device_put(batch, batch_sharding),
    )


def test_full_step_on_mesh_runs_changes_params_and_is_deterministic(mesh):
    """Tiny Janus + tiny HPS + the registry's rewards, one step on a (2, 4) mesh, twice."""
    und_fn, gen_fn, reward_state = _real_rewards()
    config = fx.grpo_config()
    batch = fx.as_jax(fx.synthetic_batch(8))
    step, state = fx.build_step(config, und_fn, gen_fn, reward_state)
    before = jax.tree.map(np.asarray, state.params)
    runs = []
    with jax.set_mesh(mesh):
        state, on_mesh = _on_mesh(mesh, state, batch)
        for _ in range(2):  # the state is donated: run from a fresh copy each time
            new_state, metrics, samples = step(
                jax.tree.map(jnp.copy, state), on_mesh, jax.random.key(0)
            )
            runs.append(jax.tree.map(float, metrics))
    metrics = runs[0]
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert runs[0] == runs[1]
    changed = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, new_state.params)
    assert any(jax.tree.leaves(changed))
    assert int(new_state.step) == 1
    kernel = new_state.params["language_model"]["layers"]["mlp"]["up_proj"]["kernel"][...]
    want = jax.NamedSharding(mesh, sharding.logical_to_spec(("layers", "embed", "mlp")))
    assert kernel.sharding.is_equivalent_to(want, kernel.ndim)
    for key in (
        "und/accuracy",
        "gen/hps",
        "und/clip_fraction",
        "gen/entropy",
        "grad_norm",
        "pair_weight_mean",
        "und/completion_length",
        "learning_rate",
        "und/logp_gap",
    ):
        assert key in metrics
    # At the first inner step the policy is the sampler: teacher-forced log-probs match.
    assert metrics["und/logp_gap"] < 1e-4 and metrics["gen/logp_gap"] < 1e-4
    assert metrics["und/clip_fraction"] == 0.0
    # The previews are the first pair's K_g images and K_u answers, with their rewards.
    k_u, k_g = config.rollout.num_und_rollouts, config.rollout.num_gen_rollouts
    assert samples.images.shape == (k_g, 32, 32, 3) and samples.images.dtype == jnp.uint8
    assert samples.answers.shape == (k_u, config.rollout.max_new_tokens)
    assert samples.answer_mask.shape == samples.answers.shape
    assert samples.image_rewards.shape == (k_g,) and samples.answer_rewards.shape == (k_u,)


def test_learn_raises_both_rewards_above_noise():
    """A knowable synthetic task: reward = fraction of sampled tokens in the lower half of the
    vocabulary (answers) / codebook (images). N real train steps must raise each side's mean
    reward by several times its run-to-run noise; a sign error in the loss makes it fall."""
    config = fx.grpo_config(
        rollout=fx.RolloutConfig(num_und_rollouts=8, num_gen_rollouts=4, max_new_tokens=8)
    )
    step, state = fx.build_step(config, *fx.low_half_rewards(), lr=1e-2)
    gain, noise = fx.reward_gain(step, state, num_steps=20)
    assert np.all(gain > 4 * np.maximum(noise, 0.01)), (gain, noise)


def _fixed_rollouts(step, state, batch, seed=0, offset=0.05):
    """Rollout-shaped inputs of ``TrainStep._gradient`` with known tokens and old log-probs."""
    rng = np.random.default_rng(seed)
    c = step.config
    ku, kg = c.rollout.num_und_rollouts, c.rollout.num_gen_rollouts
    rep = lambda x, k: jnp.repeat(jnp.asarray(x), k, axis=0)  # noqa: E731
    rows_u, rows_g = batch["und_input_ids"].shape[0] * ku, batch["gen_input_ids"].shape[0] * kg
    und_mask = jnp.asarray(np.arange(6)[None] < rng.integers(2, 7, (rows_u, 1)))
    und = UnderstandingRollouts(
        prompt_ids=rep(batch["und_input_ids"], ku),
        prompt_mask=rep(batch["und_attention_mask"], ku),
        pixel_values=rep(batch["und_pixel_values"], ku),
        completion=jnp.asarray(rng.integers(6, fx.CONFIG.text.vocab_size, (rows_u, 6)), jnp.int32),
        mask=und_mask,
        old_logp=jnp.zeros(und_mask.shape),
        advantages=jnp.asarray(rng.normal(size=rows_u), jnp.float32),
        ref_logp=None,
    )
    image_shape = (rows_g, fx.CONFIG.vq.num_tokens)
    gen = GenerationRollouts(
        prompt_ids=rep(batch["gen_input_ids"], kg),
        prompt_mask=rep(batch["gen_attention_mask"], kg),
        completion=jnp.asarray(
            rng.integers(0, fx.CONFIG.vq.num_embeddings, image_shape), jnp.int32
        ),
        mask=jnp.ones(image_shape, bool),
        old_logp=jnp.zeros(image_shape),
        advantages=jnp.asarray(rng.normal(size=rows_g), jnp.float32),
        ref_logp=None,
    )
    model = step._model(state.params, state.frozen)
    und = und.replace(
        old_logp=step._answer_logprobs(model, und)[0] + offset * rng.normal(size=und.mask.shape)
    )
    gen = gen.replace(
        old_logp=step._image_logprobs(model, gen)[0] + offset * rng.normal(size=gen.mask.shape)
    )
    dens = (und.mask.sum().astype(jnp.float32), gen.mask.sum().astype(jnp.float32))
    return und, gen, dens


def _loss_and_grad(step, state, und, gen, dens):
    @jax.jit
    def fn(params):
        grads, sums = step._gradient(params, state.frozen, und, gen, dens)
        loss = sums["und"]["loss"][0] / dens[0] + sums["gen"]["loss"][0] / dens[1]
        return loss, grads

    return fn


@pytest.fixture(scope="module")
def tiny_step():
    return fx.build_step(fx.grpo_config(), *fx.low_token_rewards(1, 1))


def test_grpo_gradient_matches_finite_differences(tiny_step):
    step, state = tiny_step
    und, gen, dens = _fixed_rollouts(step, state, fx.synthetic_batch(2), offset=0.0)
    fn = _loss_and_grad(step, state, und, gen, dens)
    _, grads = fn(state.params)
    leaves, treedef = jax.tree.flatten(grads)
    g_norm = jnp.sqrt(sum(jnp.sum(g * g) for g in leaves))
    for seed in (0, 1):  # the gradient direction, then a random direction half along it
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        noise = [seed * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
        n_norm = jnp.sqrt(sum(jnp.sum(n * n) for n in noise)) + 1e-12
        direction = [g / g_norm + n / n_norm for g, n in zip(leaves, noise)]
        d_norm = jnp.sqrt(sum(jnp.sum(d * d) for d in direction))
        direction = jax.tree.unflatten(treedef, [d / d_norm for d in direction])
        h = 1e-4  # the loss curves fast along the gradient: larger steps see the curvature
        plus = fn(jax.tree.map(lambda p, d, h=h: p + h * d, state.params, direction))[0]
        minus = fn(jax.tree.map(lambda p, d, h=h: p - h * d, state.params, direction))[0]
        numeric = float((plus - minus) / (2 * h))
        analytic = float(sum(jnp.sum(g * d) for g, d in zip(leaves, jax.tree.leaves(direction))))
        print(f"direction {seed}: analytic {analytic:.6f}, finite difference {numeric:.6f}")
        assert abs(analytic) > 1e-2
        assert abs(numeric - analytic) <= 2e-3 * abs(analytic)


def test_grpo_similarity_weight_scales_pair_gradient(tiny_step):
    """Two identical pairs, one aligned (w = 1), one retrieved with s = 0.1296 (w = sqrt(s) = 0.36):
    the retrieved pair's gradient is 0.36 times the aligned pair's."""
    step, state = tiny_step
    batch = fx.synthetic_batch(1)
    und, gen, dens = _fixed_rollouts(step, state, batch, offset=0.0)
    weights = adv_lib.pair_weights(
        jnp.array([1.0, 0.1296]), jnp.array([True, False]), step.config.pair_weighting
    )
    rewards = jnp.array([[1.0, 0.0]])
    grads = []
    for w in weights:
        und_w = und.replace(advantages=adv_lib.weighted_advantages(rewards, w[None]).reshape(-1))
        gen_w = gen.replace(
            advantages=adv_lib.weighted_advantages(rewards[:, ::-1], w[None]).reshape(-1)
        )
        grads.append(_loss_and_grad(step, state, und_w, gen_w, dens)(state.params)[1])
    ratios = [
        np.asarray(b) / np.asarray(a)
        for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]))
        if np.abs(np.asarray(a)).max() > 1e-6
    ]
    assert ratios
    for r in ratios:
        finite = np.isfinite(r) & (np.abs(r) < 10)
        np.testing.assert_allclose(np.median(r[finite]), 0.36, rtol=1e-4)


def test_grpo_step_with_kl_guided_logprobs_accumulation_and_inner_iterations():
    """β > 0 (frozen reference, k3), CFG-guided image log-probs, 2 micro-batches, μ = 2: at the
    first inner iteration the policy equals both the sampler and the reference."""
    from pairuni_jax.rl.loss import LossConfig
    from pairuni_jax.rl.policy import ImageLogprob

    config = fx.grpo_config(
        loss=LossConfig(kl_beta=0.05),
        image_logprob=ImageLogprob.GUIDED,
        micro_batches=2,
        inner_iterations=2,
    )
    step, state = fx.build_step(config, *fx.low_token_rewards(512, 32), lr=1e-2)
    assert state.ref_params is not None
    new_state, metrics, _ = step(state, fx.as_jax(fx.synthetic_batch(2)), jax.random.key(3))
    metrics = jax.tree.map(float, metrics)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert metrics["und/kl"] < 1e-6 and metrics["gen/kl"] < 1e-6
    assert metrics["und/logp_gap"] < 1e-4 and metrics["gen/logp_gap"] < 1e-4
    assert int(new_state.step) == 1
    moved = jax.tree.map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
        new_state.params,
        new_state.ref_params,
    )
    assert any(jax.tree.leaves(moved))
