"""The shipped demo world (``scripts/build_demo_world.py``): it loads through the loaders a user's
checkpoints go through, its VQ reconstructs the demo images, and its reward CLIP scores each
image's own caption far above other scenes' captions, on drawn and on VQ-decoded images alike."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pairuni_jax.checkpoint.convert import load_model
from pairuni_jax.data import images as image_lib
from pairuni_jax.data.pipeline import DEMO_PAIRS
from pairuni_jax.rewards.clip_text import clip_token_ids, load_clip_tokenizer
from pairuni_jax.rewards.hps import hps_score, load_reward_model
from pairuni_jax.run_config import DEMO_POLICY, DEMO_REWARD, RunConfig

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
