"""Tiny Pair-GRPO set-ups shared by the train-step tests: model, synthetic batch, step builder."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pairuni_jax.models.janus import Janus, JanusConfig
from pairuni_jax.models.random_init import random_module
from pairuni_jax.rl import optimizer as opt_lib
from pairuni_jax.rl.train_step import GRPOConfig, RolloutConfig, TrainStep, init_train_state
from pairuni_jax.rollout.image import ImageSettings
from pairuni_jax.rollout.text import TextSettings

CONFIG = JanusConfig.tiny()
BOS, EOS, PAD, IMG, BOI, EOI = 0, 1, 2, 3, 4, 5  # the bundled tiny tokenizer's special ids


def synthetic_batch(num_pairs: int, seed: int = 0, und_len: int = 32, gen_len: int = 12) -> dict:
    """A pipeline-shaped batch: left-padded prompts, one image per understanding prompt."""
    rng = np.random.default_rng(seed)
    n_img = CONFIG.num_image_tokens
    vocab = CONFIG.text.vocab_size

    def left_pad(rows, length):
        ids = np.full((len(rows), length), PAD, np.int32)
        mask = np.zeros((len(rows), length), bool)
        for i, row in enumerate(rows):
            ids[i, length - len(row) :] = row
            mask[i, length - len(row) :] = True
        return ids, mask

    und_rows, gen_rows = [], []
    for p in range(num_pairs):
        text = list(rng.integers(8, vocab, size=und_len - n_img - 4 - p % 3))
        und_rows.append([BOS, *text[:3], BOI, *[IMG] * n_img, EOI, *text[3:]])
        gen_rows.append([BOS, *rng.integers(8, vocab, size=gen_len - 2 - p % 2), BOI])
    und_ids, und_mask = left_pad(und_rows, und_len)
    gen_ids, gen_mask = left_pad(gen_rows, gen_len)
    hps_ids = np.zeros((num_pairs, 77), np.int32)
    hps_ids[:, 0] = 49406
    hps_ids[:, 1:9] = rng.integers(300, 49000, size=(num_pairs, 8))
    hps_ids[:, 9] = 49407
    size = CONFIG.vision.image_size
    return {
        "und_input_ids": und_ids,
        "und_attention_mask": und_mask,
        "und_pixel_values": rng.uniform(-1, 1, (num_pairs, size, size, 3)).astype(np.float32),
        "und_answer": rng.integers(0, 4, num_pairs).astype(np.int32),
        "und_num_options": np.full(num_pairs, 4, np.int32),
        "gen_input_ids": gen_ids,
        "gen_attention_mask": gen_mask,
        "hps_input_ids": hps_ids,
        "similarity": np.linspace(0.3, 1.0, num_pairs).astype(np.float32),
        "pair_weight_aligned": np.arange(num_pairs) % 2 == 0,
        "record_index": np.arange(num_pairs, dtype=np.int32),
    }


def grpo_config(**overrides) -> GRPOConfig:
    rollout = RolloutConfig(num_und_rollouts=2, num_gen_rollouts=2, max_new_tokens=8)
    return dataclasses.replace(GRPOConfig(rollout=rollout), **overrides)


def build_step(
    config: GRPOConfig,
    und_reward,
    gen_reward,
    reward_state=None,
    lr=1e-3,
    seed=0,
    model: Janus | None = None,
    skip_nonfinite: bool = False,
):
    if model is None:
        model = random_module(lambda: Janus(CONFIG, rngs=nnx.Rngs(0)), seed)
    opt_config = opt_lib.OptimizerConfig(learning_rate=lr, clip_norm=0.0)
    optimizer = opt_lib.make_optimizer(opt_config)
    graphdef, state = init_train_state(model, config, optimizer)
    step = TrainStep(
        graphdef,
        config,
        optimizer,
        TextSettings(
            eos_id=EOS,
            pad_id=PAD,
            max_new_tokens=config.rollout.max_new_tokens,
            temperature=config.rollout.text_temperature,
        ),
        ImageSettings(
            pad_id=PAD,
            cfg_weight=config.rollout.cfg_weight,
            temperature=config.rollout.image_temperature,
        ),
        und_reward,
        gen_reward,
        reward_state,
        learning_rate=opt_lib.learning_rate_schedule(opt_config),
        skip_nonfinite=skip_nonfinite,
    )
    return step, state


def low_token_rewards(threshold_text: int, threshold_image: int):
    """Test-only rewards: the fraction of sampled tokens below a threshold, per side."""

    def und(state, tokens, mask, batch, k):
        m = mask.astype(jnp.float32)
        r = ((tokens < threshold_text) * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)
        return r, {"low_tokens": r}

    def gen(state, pixels, tokens, batch, k):
        r = jnp.mean((tokens < threshold_image).astype(jnp.float32), axis=-1)
        return r, {"low_tokens": r}

    return und, gen


def low_half_rewards():
    """``low_token_rewards`` at half the vocabulary and half the codebook."""
    return low_token_rewards(CONFIG.text.vocab_size // 2, CONFIG.vq.num_embeddings // 2)


def reward_means(step, state, batch, keys) -> np.ndarray:
    """Mean reward of each side [len(keys), 2] for rollouts of ``state``'s policy (no update
    kept)."""
    values = []
    for key in keys:
        _, metrics, _ = step(jax.tree.map(jnp.copy, state), batch, key)
        values.append((float(metrics["und/reward_mean"]), float(metrics["gen/reward_mean"])))
    return np.array(values)


def reward_gain(step, state, num_steps: int, num_pairs: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(gain, noise) of each side's mean reward over ``num_steps`` train steps on one batch:
    the mean over 4 rollout seeds after minus before, and the before's std over those seeds."""
    batch = as_jax(synthetic_batch(num_pairs))
    start = reward_means(step, state, batch, [jax.random.key(100 + i) for i in range(4)])
    for i in range(num_steps):
        state, _, _ = step(state, batch, jax.random.key(i))
    end = reward_means(step, state, batch, [jax.random.key(200 + i) for i in range(4)])
    print(f"after {num_steps} steps: answers, images {start.mean(0)} -> {end.mean(0)}")
    return end.mean(axis=0) - start.mean(axis=0), start.std(axis=0)


def as_jax(batch: dict) -> dict:
    return jax.tree.map(jnp.asarray, batch)
