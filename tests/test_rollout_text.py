"""Text rollouts: greedy parity with transformers ``generate``, log-probs, EOS, keys, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from pairuni_jax.models.janus import JanusConfig, positions_from_mask
from pairuni_jax.rollout import sampling
from pairuni_jax.rollout.text import TextSettings, sample_text_jit
from tests import reference

CONFIG = JanusConfig.tiny()
PAD, BOS = 0, 1
NEW = 40


@pytest.fixture(scope="module")
def models():
    hf = reference.tiny_hf_model(CONFIG, seed=0)
    return hf, reference.flax_from_hf(hf, CONFIG)


def _prompts(rows=2, seed=0):
    """Left-padded prompts of different lengths, each with one image's placeholders, + pixels."""
    rng = np.random.default_rng(seed)
    p = CONFIG.num_image_tokens
    seqs = []
    for i in range(rows):
        pre, post = rng.integers(10, CONFIG.text.vocab_size, size=(2, 2 + 2 * (i % 3)))
        seqs.append([BOS, *pre, *[CONFIG.image_token_id] * p, *post])
    length = max(map(len, seqs))
    ids = np.full((rows, length), PAD, np.int32)
    mask = np.zeros((rows, length), bool)
    for i, seq in enumerate(seqs):
        ids[i, length - len(seq) :] = seq
        mask[i, length - len(seq) :] = True
    size = CONFIG.vision.image_size
    pixels = rng.uniform(-1, 1, size=(rows, size, size, 3)).astype(np.float32)
    return ids, mask, pixels


def _rollout(model, ids, mask, pixels, settings, seed=0):
    out = sample_text_jit(
        model,
        jnp.asarray(ids),
        jnp.asarray(mask),
        jnp.asarray(pixels),
        None,
        jax.random.key(seed),
        settings,
    )
    return jax.tree.map(np.asarray, out)


@pytest.fixture(scope="module")
def hf_greedy(models):
    """transformers ``generate`` (greedy, no EOS) on two left-padded prompts with images."""
    hf, _ = models
    ids, mask, pixels = _prompts()
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            pixel_values=reference.to_torch_pixels(pixels),
            max_new_tokens=NEW,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=PAD,
            bos_token_id=BOS,
        )
    return out[:, ids.shape[1] :].numpy()


def _unused_token(tokens):
    return min(set(range(CONFIG.text.vocab_size)) - set(tokens.ravel().tolist()))


def test_greedy_text_parity_with_transformers_generate(models, hf_greedy):
    _, model = models
    assert hf_greedy.shape == (2, NEW)
    eos = _unused_token(hf_greedy)  # never produced: every row runs all NEW steps
    got = _rollout(
        model, *_prompts(), TextSettings(eos_id=eos, pad_id=PAD, max_new_tokens=NEW, greedy=True)
    )
    np.testing.assert_array_equal(got.tokens, hf_greedy)
    assert got.mask.all() and (got.lengths == NEW).all()


@pytest.mark.parametrize("eos_row", ["first_row_only", "both_rows"])
def test_eos_stops_each_row_and_masks_the_rest(models, hf_greedy, eos_row):
    _, model = models
    if eos_row == "first_row_only":
        eos = next(int(t) for t in hf_greedy[0, 1:] if t not in hf_greedy[1])
    else:
        eos = next(int(t) for t in hf_greedy[0, 1:] if t in hf_greedy[1])
    got = _rollout(
        model, *_prompts(), TextSettings(eos_id=eos, pad_id=PAD, max_new_tokens=NEW, greedy=True)
    )
    for row in range(2):
        hits = np.flatnonzero(hf_greedy[row] == eos)
        length = hits[0] + 1 if len(hits) else NEW
        assert got.lengths[row] == length
        np.testing.assert_array_equal(got.tokens[row, :length], hf_greedy[row, :length])
        assert (got.tokens[row, length:] == PAD).all()
        np.testing.assert_array_equal(got.mask[row], np.arange(NEW) < length)
        assert (got.log_probs[row, length:] == 0).all() and (got.log_probs[row, :length] < 0).all()
    if eos_row == "first_row_only":
        assert got.lengths[1] == NEW


def test_sampled_log_probs_parity_with_teacher_forced_forward(models):
    """Rollout log-probs = log-softmax of the sampling rule on a teacher-forced torch forward."""
    hf, model = models
    ids, mask, pixels = _prompts(rows=3, seed=1)
    settings = TextSettings(
        eos_id=1, pad_id=PAD, max_new_tokens=24, temperature=0.7, top_k=50, top_p=0.9
    )
    got = _rollout(model, ids, mask, pixels, settings, seed=3)
    full_ids = np.concatenate([ids, got.tokens], axis=1)
    full_mask = np.concatenate([mask, got.mask], axis=1)
    positions = np.array(positions_from_mask(full_mask))
    with torch.no_grad():  # image features merged by hand: a sampled token may equal the image id
        embeds = hf.model.get_input_embeddings()(torch.from_numpy(full_ids).long())
        features = hf.model.get_image_features(reference.to_torch_pixels(pixels)).pooler_output
        slots = torch.zeros(full_ids.shape, dtype=torch.bool)
        slots[:, : ids.shape[1]] = torch.from_numpy(ids == CONFIG.image_token_id)
        embeds[slots] = features.reshape(-1, features.shape[-1])
        hidden = hf.model.language_model(
            inputs_embeds=embeds,
            attention_mask=torch.from_numpy(full_mask).long(),
            position_ids=torch.from_numpy(positions).long(),
        ).last_hidden_state
        logits = hf.lm_head(hidden).numpy()
    s = ids.shape[1]
    want = np.asarray(
        sampling.rule_log_probs(
            jnp.asarray(logits[:, s - 1 : -1]), jnp.asarray(got.tokens), settings.rule
        )
    )
    print(
        f"max|log-prob diff| = {np.abs(got.log_probs - want)[got.mask].max():.2e} over "
        f"{got.mask.sum()} tokens"
    )
    assert np.isfinite(got.log_probs).all()
    np.testing.assert_allclose(got.log_probs[got.mask], want[got.mask], atol=2e-5, rtol=1e-5)


def test_same_key_same_samples_and_rows_are_independent(models):
    _, model = models
    ids, mask, pixels = _prompts(rows=1, seed=2)
    ids, mask, pixels = (np.concatenate([x] * 2) for x in (ids, mask, pixels))
    settings = TextSettings(eos_id=1023, pad_id=PAD, max_new_tokens=16, temperature=1.5)
    a = _rollout(model, ids, mask, pixels, settings, seed=7)
    b = _rollout(model, ids, mask, pixels, settings, seed=7)
    c = _rollout(model, ids, mask, pixels, settings, seed=8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.log_probs, b.log_probs)
    assert (a.tokens[0] != a.tokens[1]).any(), "identical prompts must sample independently"
    assert (a.tokens != c.tokens).any()


def test_sharded_rollout_equals_unsharded_on_mesh(models, mesh):
    from pairuni_jax import sharding

    _, model = models
    ids, mask, pixels = _prompts(rows=8, seed=4)
    settings = TextSettings(eos_id=7, pad_id=PAD, max_new_tokens=12, temperature=0.9, top_k=20)
    want = _rollout(model, ids, mask, pixels, settings, seed=5)
    sharded = sharding.shard_module(model, mesh)
    put = lambda x: jax.device_put(  # noqa: E731
        jnp.asarray(x), jax.NamedSharding(mesh, sharding.logical_to_spec(("batch",)))
    )
    with jax.set_mesh(mesh):
        out = sample_text_jit(
            sharded, put(ids), put(mask), put(pixels), None, jax.random.key(5), settings
        )
    assert len(out.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(out.tokens), want.tokens)
    np.testing.assert_allclose(np.asarray(out.log_probs), want.log_probs, atol=1e-5)


def test_sampling_rule_filters_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50)).astype(np.float32) * 3
    rule = sampling.SamplingRule(temperature=0.5, top_k=10, top_p=0.8)
    got = np.asarray(sampling.filtered_logits(jnp.asarray(logits), rule))
    for row, x in zip(got, logits / 0.5, strict=True):
        order = np.argsort(-x)[:10]
        probs = np.exp(x[order] - x[order].max())
        probs /= probs.sum()
        keep = order[np.cumsum(probs) - probs < 0.8]
        assert set(np.flatnonzero(np.isfinite(row))) == set(keep)
        np.testing.assert_allclose(row[keep], x[keep], rtol=1e-6)
    keys = sampling.row_keys(jax.random.key(0), 4)
    tokens, _ = sampling.sample(jnp.asarray(logits), keys, rule)
    assert np.isfinite(got[np.arange(4), np.asarray(tokens)]).all()
    with pytest.raises(ValueError, match="top_p"):
        sampling.SamplingRule(top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        TextSettings(eos_id=1, pad_id=0, max_new_tokens=0)


def test_sampler_frequencies_follow_the_sampling_distribution():
    """200k draws from one row (V = 600, two blocks of the inverse CDF, a top-k hole)."""
    logits = np.random.default_rng(1).normal(size=(1, 600)).astype(np.float32) * 2
    rule = sampling.SamplingRule(temperature=1.3, top_k=400)
    n = 200_000
    tokens, log_probs = sampling.sample(
        jnp.tile(jnp.asarray(logits), (n, 1)), sampling.row_keys(jax.random.key(1), n), rule
    )
    want = np.asarray(jax.nn.softmax(sampling.filtered_logits(jnp.asarray(logits[0]), rule)))
    freq = np.bincount(np.asarray(tokens), minlength=600) / n
    assert (freq[want == 0] == 0).all() and (want == 0).sum() == 200
    assert np.abs(freq - want).max() < 4 * np.sqrt(want.max() / n)
    np.testing.assert_allclose(np.exp(np.asarray(log_probs)), want[np.asarray(tokens)], rtol=1e-5)


def test_samples_per_prompt_share_one_prefill_and_equal_repeated_prompts(models):
    _, model = models
    ids, mask, pixels = _prompts(rows=2, seed=6)
    base = dict(eos_id=1, pad_id=PAD, max_new_tokens=10, temperature=1.2)
    grouped = _rollout(model, ids, mask, pixels, TextSettings(**base, samples_per_prompt=3), 9)
    repeated = _rollout(
        model, *(np.repeat(x, 3, axis=0) for x in (ids, mask, pixels)), TextSettings(**base), 9
    )
    assert grouped.tokens.shape == (6, 10)
    np.testing.assert_array_equal(grouped.tokens, repeated.tokens)
    np.testing.assert_allclose(grouped.log_probs, repeated.log_probs, atol=1e-5)
    assert len({tuple(row) for row in grouped.tokens[:3]}) == 3
