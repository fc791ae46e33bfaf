"""CFG image rollouts: greedy parity with the original loop and with transformers, log-probs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from pairuni_jax.models.janus import Janus, JanusConfig
from pairuni_jax.rollout import image as image_rollout
from pairuni_jax.rollout.image import ImageSettings, sample_images_jit
from tests import reference

CONFIG = JanusConfig.tiny()
P = CONFIG.num_generated_image_tokens
BOS, PAD, BOI = 1, 2, 3
CFG = 5.0


@pytest.fixture(scope="module")
def models():
    hf = reference.tiny_hf_model(CONFIG, seed=1)
    # Extra noise on the generation head: the greedy tokens of the plain tiny model collapse to
    # one repeated token, which would make the parity tests nearly vacuous.
    reference.perturb_(hf.model.generation_head, seed=100, scale=0.7)
    return hf, reference.flax_from_hf(hf, CONFIG)


def _prompt(length, seed):
    """[BOS, text..., BOI]: BOS and BOI occur only at the ends (as in real Janus prompts)."""
    text = np.random.default_rng(seed).integers(10, CONFIG.text.vocab_size, size=length - 2)
    return np.array([BOS, *text, BOI], np.int32)


def _left_pad(prompts):
    length = max(map(len, prompts))
    ids = np.full((len(prompts), length), PAD, np.int32)
    mask = np.zeros(ids.shape, bool)
    for i, p in enumerate(prompts):
        ids[i, length - len(p) :] = p
        mask[i, length - len(p) :] = True
    return ids, mask


def _rollout(model, ids, mask, settings, seed=0):
    key = jax.random.key(seed)
    out = sample_images_jit(model, jnp.asarray(ids), jnp.asarray(mask), key, settings)
    return jax.tree.map(np.asarray, out)


def _original_greedy_loop(hf, prompt, parallel, cfg):
    """``generation_inference.py`` (spec §5.2) with argmax: interleaved cond/uncond rows, odd rows
    ``[BOS, PAD..., BOI]``, no attention mask, one prefill then one token per step."""
    tokens = torch.from_numpy(np.tile(prompt, (2 * parallel, 1))).long()
    tokens[1::2, 1:-1] = PAD
    lm = hf.model.language_model
    embeds = lm.get_input_embeddings()(tokens)
    cache = transformers.DynamicCache(config=lm.config)
    generated = torch.zeros((parallel, P), dtype=torch.long)
    with torch.no_grad():
        for i in range(P):
            hidden = lm(inputs_embeds=embeds, use_cache=True, cache=cache).last_hidden_state[:, -1]
            logits = hf.model.generation_head(hidden)
            cond, uncond = logits[0::2], logits[1::2]
            nxt = torch.argmax(uncond + cfg * (cond - uncond), dim=-1)
            generated[:, i] = nxt
            pair = torch.stack([nxt, nxt], dim=1).view(-1)
            embeds = hf.prepare_embeddings_for_image_generation(pair).unsqueeze(1)
    return generated.numpy()


def test_greedy_cfg_parity_with_original_procedure_left_padded(models):
    """Two prompts of different lengths in one left-padded batch vs the original loop per prompt."""
    hf, model = models
    prompts = [_prompt(7, seed=0), _prompt(11, seed=1)]
    settings = ImageSettings(pad_id=PAD, cfg_weight=CFG, greedy=True)
    got = _rollout(model, *_left_pad(prompts), settings)
    assert got.tokens.shape == (2, P)
    for row, prompt in enumerate(prompts):
        want = _original_greedy_loop(hf, prompt, parallel=2, cfg=CFG)
        np.testing.assert_array_equal(want[0], want[1])
        np.testing.assert_array_equal(got.tokens[row], want[0])
    for row in got.tokens:
        assert len(set(row)) > 4, "degenerate image tokens would make the parity vacuous"


def test_greedy_cfg_parity_with_transformers_generate_image_mode(models):
    hf, model = models
    ids = np.stack([_prompt(9, seed=2), _prompt(9, seed=3)])
    config = transformers.GenerationConfig(
        max_new_tokens=P,
        do_sample=False,
        guidance_scale=3.0,
        bos_token_id=BOS,
        pad_token_id=PAD,
        generation_kwargs={"boi_token_id": BOI},
    )
    with torch.no_grad():
        want = hf.generate(
            torch.from_numpy(ids).long(),
            attention_mask=torch.ones(ids.shape, dtype=torch.long),
            generation_config=config,
            generation_mode="image",
        ).numpy()
    got = _rollout(
        model, ids, np.ones(ids.shape, bool), ImageSettings(pad_id=PAD, cfg_weight=3.0, greedy=True)
    )
    np.testing.assert_array_equal(got.tokens, want)
    assert all(len(set(row)) > 4 for row in got.tokens)


def test_sampled_log_probs_parity_with_teacher_forced_forward(models):
    """Guided and conditional log-probs equal a teacher-forced torch forward over the images."""
    hf, model = models
    prompts = [_prompt(6, seed=4), _prompt(9, seed=5), _prompt(8, seed=6)]
    ids, mask = _left_pad(prompts)
    settings = ImageSettings(pad_id=PAD, cfg_weight=2.5, temperature=0.8)
    got = _rollout(model, ids, mask, settings, seed=11)
    cfg_ids, cfg_mask = (np.array(x) for x in image_rollout.cfg_batch(ids, mask, PAD))
    feedback = np.repeat(got.tokens[:, :-1], 2, axis=0)
    with torch.no_grad():
        lm = hf.model.language_model
        embeds = torch.cat(
            [
                lm.get_input_embeddings()(torch.from_numpy(cfg_ids).long()),
                hf.prepare_embeddings_for_image_generation(torch.from_numpy(feedback).long()),
            ],
            dim=1,
        )
        full_mask = np.concatenate([cfg_mask, np.ones(feedback.shape, bool)], axis=1)
        positions = np.maximum(np.cumsum(full_mask, axis=1) - 1, 0)
        hidden = lm(
            inputs_embeds=embeds,
            attention_mask=torch.from_numpy(full_mask).long(),
            position_ids=torch.from_numpy(positions).long(),
        ).last_hidden_state
        logits = hf.model.generation_head(hidden[:, ids.shape[1] - 1 :]).numpy()
    cond, uncond = logits[0::2], logits[1::2]
    guided = uncond + 2.5 * (cond - uncond)

    def log_softmax_at(x):
        x = x / 0.8
        x = x - x.max(-1, keepdims=True)
        lp = x - np.log(np.exp(x).sum(-1, keepdims=True))
        return np.take_along_axis(lp, got.tokens[..., None], -1)[..., 0]

    print(f"guided max|diff| = {np.abs(got.log_probs - log_softmax_at(guided)).max():.2e}")
    np.testing.assert_allclose(got.log_probs, log_softmax_at(guided), atol=3e-5, rtol=1e-5)
    np.testing.assert_allclose(got.cond_log_probs, log_softmax_at(cond), atol=3e-5, rtol=1e-5)


def test_unconditional_prompt_is_bos_pads_boi_in_graph():
    ids, mask = _left_pad([np.array([BOS, 20, 21, 22, BOI]), np.array([BOS, 30, BOI])])
    cfg_ids, cfg_mask = (np.array(x) for x in image_rollout.cfg_batch(ids, mask, PAD))
    np.testing.assert_array_equal(
        cfg_ids,
        [
            [BOS, 20, 21, 22, BOI],
            [BOS, PAD, PAD, PAD, BOI],
            [PAD, PAD, BOS, 30, BOI],
            [PAD, PAD, BOS, PAD, BOI],
        ],
    )
    np.testing.assert_array_equal(cfg_mask, np.repeat(mask, 2, axis=0))


def test_same_key_same_images_rows_independent_and_sharded(models, mesh):
    from pairuni_jax import sharding

    _, model = models
    ids, mask = _left_pad([_prompt(8, seed=7)] * 8)
    settings = ImageSettings(pad_id=PAD, cfg_weight=1.5, temperature=3.0)
    a = _rollout(model, ids, mask, settings, seed=3)
    b = _rollout(model, ids, mask, settings, seed=3)
    c = _rollout(model, ids, mask, settings, seed=4)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert len({tuple(t) for t in a.tokens}) == 8, "identical prompts must sample independently"
    assert (a.tokens != c.tokens).any()
    sharded = sharding.shard_module(model, mesh)
    put = lambda x: jax.device_put(  # noqa: E731
        jnp.asarray(x), jax.NamedSharding(mesh, sharding.logical_to_spec(("batch",)))
    )
    with jax.set_mesh(mesh):
        out = sample_images_jit(sharded, put(ids), put(mask), jax.random.key(3), settings)
    assert len(out.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(out.tokens), a.tokens)
    np.testing.assert_allclose(np.asarray(out.log_probs), a.log_probs, atol=3e-5, rtol=1e-5)


@pytest.mark.parametrize("segments", [2, 5, 100])
def test_cache_segments_do_not_change_the_samples(models, segments):
    """Decoding in segments over a growing cache (early tokens never read the slots of later
    ones) samples the same tokens with the same log-probs as one loop over the full cache."""
    _, model = models
    ids, mask = _left_pad([_prompt(6, seed=11), _prompt(9, seed=12)])
    settings = ImageSettings(pad_id=PAD, cfg_weight=2.0, temperature=2.0, cache_segments=1)
    want = _rollout(model, ids, mask, settings, seed=5)
    got = _rollout(model, ids, mask, dataclasses.replace(settings, cache_segments=segments), 5)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    # The attention reductions run over caches of other lengths, so the sums associate in another
    # order: fp32 noise of a few 1e-5 on log-probs of order 1 (as in the test above).
    np.testing.assert_allclose(got.log_probs, want.log_probs, atol=5e-5, rtol=1e-5)
    np.testing.assert_allclose(got.cond_log_probs, want.cond_log_probs, atol=5e-5, rtol=1e-5)


def test_samples_per_prompt_share_one_prefill_and_equal_repeated_prompts(models):
    _, model = models
    ids, mask = _left_pad([_prompt(6, seed=9), _prompt(8, seed=10)])
    base = dict(pad_id=PAD, cfg_weight=1.5, temperature=3.0)
    grouped = _rollout(model, ids, mask, ImageSettings(**base, samples_per_prompt=3), seed=2)
    repeated = _rollout(
        model, np.repeat(ids, 3, axis=0), np.repeat(mask, 3, axis=0), ImageSettings(**base), 2
    )
    assert grouped.tokens.shape == (6, P)
    np.testing.assert_array_equal(grouped.tokens, repeated.tokens)
    np.testing.assert_allclose(grouped.log_probs, repeated.log_probs, atol=3e-5, rtol=1e-5)
    np.testing.assert_allclose(grouped.cond_log_probs, repeated.cond_log_probs, atol=3e-5)
    assert len({tuple(row) for row in grouped.tokens[:3]}) == 3


def test_image_token_count_comes_from_config(models):
    """A 6 x 6 grid (36 tokens) from the VQ config, then decoded to uint8 images."""
    _, model = models
    config = dataclasses.replace(CONFIG, vq=dataclasses.replace(CONFIG.vq, image_size=48))
    assert config.num_generated_image_tokens == 36
    # The VQ weights do not depend on the image size: reuse the tiny model's under the new config.
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Janus(config, rngs=nnx.Rngs(0))))
    model = nnx.merge(graphdef, nnx.state(model))
    ids, mask = _left_pad([_prompt(5, seed=8)])
    out = _rollout(model, ids, mask, ImageSettings(pad_id=PAD))
    assert out.tokens.shape == out.log_probs.shape == (1, 36)
    assert ((0 <= out.tokens) & (out.tokens < config.vq.num_embeddings)).all()
    pixels = np.asarray(image_rollout.decode_images_jit(model, jnp.asarray(out.tokens)))
    assert pixels.shape == (1, 48, 48, 3) and pixels.dtype == np.uint8


def test_settings_are_validated():
    with pytest.raises(ValueError, match="temperature"):
        ImageSettings(pad_id=PAD, temperature=0.0)
    with pytest.raises(ValueError, match="pad_id"):
        ImageSettings(pad_id=-1)
    with pytest.raises(ValueError, match="cache_segments"):
        ImageSettings(pad_id=PAD, cache_segments=0)
