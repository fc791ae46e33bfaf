"""The shipped demo world (``scripts/build_demo_world.py``): it loads through the loaders a user's
checkpoints go through, its VQ reconstructs the demo images, and its reward CLIP scores each
image's own caption far above other scenes' captions, on drawn and on VQ-decoded images alike,
and its warm-started policy answers from the image (but is often wrong: room for RL)."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pairuni_jax.checkpoint.convert import load_model
from pairuni_jax.data import images as image_lib
from pairuni_jax.data.pipeline import DEMO_PAIRS, PairPipeline
from pairuni_jax.data.prompts import load_tokenizer
from pairuni_jax.demo.vision_pretrain import VisionTrainConfig, pretrain_vision
from pairuni_jax.models.siglip import SiglipConfig, SiglipVisionModel
from pairuni_jax.rewards.clip_text import clip_token_ids, load_clip_tokenizer
from pairuni_jax.rewards.hps import hps_score, load_reward_model
from pairuni_jax.rl.policy import answer_logprobs
from pairuni_jax.run_config import DEMO_POLICY, DEMO_REWARD, RunConfig, demo_data
from pairuni_jax.sft import answer_targets

NUM_IMAGES = 96


def _demo_images() -> tuple[list, list[str]]:
    """The first NUM_IMAGES distinct generation images of the demo pairs and their captions."""
    seen: dict[str, str] = {}
    for line in DEMO_PAIRS.read_text().splitlines():
        ann = json.loads(line)["generate_ann"]
        seen.setdefault(ann["image_path"], ann["prompt"])
        if len(seen) == NUM_IMAGES:
            break
    return [DEMO_PAIRS.parent / p for p in seen], list(seen.values())


@pytest.fixture(scope="module")
def world():
    policy = load_model(DEMO_POLICY)
    reward = load_reward_model(DEMO_REWARD)
    tokenizer = load_clip_tokenizer(DEMO_REWARD)
    paths, captions = _demo_images()
    size = policy.config.vq.image_size
    pixels = jnp.asarray(np.stack([image_lib.load_and_preprocess(p, size) for p in paths]))
    rebuilt = nnx.jit(lambda vq, x: vq.decode_tokens(vq.encode(x)))(policy.vqmodel, pixels)
    return policy, reward, jnp.asarray(clip_token_ids(tokenizer, captions)), pixels, rebuilt


def test_demo_world_is_the_default_and_small():
    defaults = RunConfig()
    assert (defaults.model.path, defaults.reward.path) == (str(DEMO_POLICY), str(DEMO_REWARD))
    size = sum(f.stat().st_size for d in (DEMO_POLICY, DEMO_REWARD) for f in d.rglob("*"))
    assert size < 4 * 2**20, f"the demo world is {size / 2**20:.1f} MiB"


def test_demo_vq_reconstructs_the_demo_images(world):
    _, _, _, pixels, rebuilt = world
    mse = float(jnp.mean((rebuilt - pixels) ** 2))
    baseline = float(jnp.mean((pixels - pixels.mean(axis=(1, 2), keepdims=True)) ** 2))
    # 0.033 against 0.130 for each image's mean colour (most of a scene is its background).
    assert mse < 0.05 and mse < 0.4 * baseline, (mse, baseline)


@pytest.mark.parametrize("kind", ["drawn", "VQ-decoded"])
def test_demo_reward_prefers_each_images_own_caption(world, kind):
    _, reward, ids, pixels, rebuilt = world
    images = pixels if kind == "drawn" else rebuilt
    score = nnx.jit(lambda m, x, t: hps_score(m, x, text_ids=t))
    own = np.asarray(score(reward, images, ids))
    others = np.asarray(score(reward, images, jnp.roll(ids, 1, axis=0)))  # a neighbour's caption
    same = np.all(np.asarray(ids) == np.roll(np.asarray(ids), 1, axis=0), axis=1)
    gap = own[~same] - others[~same]
    assert gap.mean() > 0.5 and np.mean(gap > 0) > 0.9, (own.mean(), others.mean())


def test_demo_policy_knows_the_format_and_leaves_rl_room(world):
    """The supervised warm start stops early so that RL has something to learn: the option
    letters carry the first answer token's probability, the right letter's share is above what
    another pair's image gives it (the image is read) but far from certain."""
    policy = world[0]
    tokenizer = load_tokenizer(DEMO_POLICY)
    config = dataclasses.replace(demo_data(), pairs_per_host=NUM_IMAGES, num_epochs=1)
    batch = next(PairPipeline(config, tokenizer, lambda t: np.zeros((len(t), 77))).iterator())
    letters, mask = answer_targets(tokenizer, "ABCDEF")

    @nnx.jit
    def letter_logprobs(model, pixels):  # float32[B, 6]: log p(first token of each letter)
        rows = []
        for ids, m in zip(letters, mask):
            completion = jnp.broadcast_to(ids, (len(pixels), len(ids)))
            completion_mask = jnp.broadcast_to(m, completion.shape)
            logp, _ = answer_logprobs(
                model,
                batch["und_input_ids"],
                batch["und_attention_mask"],
                pixels,
                completion,
                completion_mask,
                1.0,
                128,
            )
            rows.append(logp[:, 0])
        return jnp.stack(rows, axis=1)

    answer, options = batch["und_answer"], batch["und_num_options"]
    chance = np.mean(1.0 / options)
    valid = np.arange(len(letters))[None] < options[:, None]
    results = {}
    for name, pixels in (
        ("own", batch["und_pixel_values"]),
        ("other", batch["und_pixel_values"][::-1]),
    ):
        logp = np.where(valid, np.asarray(letter_logprobs(policy, jnp.asarray(pixels))), -np.inf)
        options_mass = np.exp(logp).sum(axis=1)
        right = np.exp(logp[np.arange(len(answer)), answer]) / options_mass
        results[name] = (right.mean(), options_mass.mean())
    (p_own, mass), (p_other, _) = results["own"], results["other"]
    assert mass > 0.75, results  # answers start with one of the question's letters
    assert p_other + 0.02 < p_own < 0.5 and abs(p_other - chance) < 0.05, (results, chance)


def test_pretrain_vision_teaches_a_random_tower_the_attributes():
    """Two attributes of 32-px images (the colour of a square, and which half it is in), each
    at chance for the random tower's heads, learned by ``pretrain_vision`` in 80 steps."""
    rng = np.random.default_rng(0)
    colours = np.array([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    labels = np.stack([rng.integers(0, 3, 256), rng.integers(0, 2, 256)], axis=1)
    pixels = np.full((256, 32, 32, 3), 0.8, np.float32)
    for image, (colour, half) in zip(pixels, labels):
        image[8:20, 2 + 16 * half : 14 + 16 * half] = colours[colour]
    tower = SiglipVisionModel(SiglipConfig.tiny(), rngs=nnx.Rngs(0))
    train = VisionTrainConfig(steps=80, batch_size=32)
    accuracy = pretrain_vision(tower, pixels, labels, (3, 2), train, progress=False)
    np.testing.assert_array_equal(accuracy, [1.0, 1.0])
