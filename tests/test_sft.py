"""The supervised warm start (``pairuni sft``): its loss against a plain full-softmax reference,
that it fits a batch with the VQ frozen, and the command's model directory."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pairuni_jax import cli
from pairuni_jax.checkpoint.convert import load_model
from pairuni_jax.data.pipeline import TINY_TOKENIZER, PairPipeline
from pairuni_jax.data.prompts import load_tokenizer
from pairuni_jax.models.janus import Janus, JanusConfig, positions_from_mask
from pairuni_jax.models.random_init import random_module
from pairuni_jax.rl import optimizer as opt_lib
from pairuni_jax.rl.train_step import new_state
from pairuni_jax.rollout.image import unconditional_prompt
from pairuni_jax.run_config import demo_data, load_run_config
from pairuni_jax.sft import (
    SFTConfig,
    SFTRunConfig,
    SFTStep,
    answer_targets,
    run_sft,
)

PAIRS = 4


@pytest.fixture(scope="module")
def setup():
    tokenizer = load_tokenizer(TINY_TOKENIZER)
    data = dataclasses.replace(demo_data(), pairs_per_host=PAIRS, generation_images=True)
    batch = next(
        PairPipeline(data, tokenizer, lambda t: np.zeros((len(t), 77), np.int32)).iterator()
    )
    model = random_module(lambda: Janus(JanusConfig.tiny(), rngs=nnx.Rngs(0)), 3)
    optimizer = opt_lib.make_optimizer(opt_lib.OptimizerConfig(learning_rate=3e-3, clip_norm=1.0))
    config = SFTConfig(uncond_fraction=0.5)
    graphdef, state = new_state(model, config.frozen_modules, optimizer)
    ids, mask = answer_targets(tokenizer, config.option_letters)
    step = SFTStep(graphdef, config, optimizer, ids, mask, tokenizer.pad_token_id)
    return tokenizer, jax.tree.map(jnp.asarray, batch), model, step, state


def test_sft_answer_targets_are_the_letter_then_eos():
    tokenizer = load_tokenizer(TINY_TOKENIZER)
    ids, mask = answer_targets(tokenizer, "ABC")
    for row, row_mask, letter in zip(ids, mask, "ABC"):
        assert tokenizer.decode(row[row_mask]) == letter + tokenizer.eos_token


def _reference_nll(model, batch, targets, target_mask, drop, pad_id):
    """Both NLLs from one full forward per side and a full log-softmax (no chunks, no helpers)."""
    und_ids, und_mask = batch["und_input_ids"], batch["und_attention_mask"]
    embeds = jnp.concatenate(
        [model.embed(und_ids, batch["und_pixel_values"]), model.embed(targets)], axis=1
    )
    mask = jnp.concatenate([und_mask, target_mask], axis=1)
    hidden, _ = model(embeds, positions_from_mask(mask), mask)
    s, n = und_ids.shape[1], targets.shape[1]
    logp = jax.nn.log_softmax(model.text_logits(hidden[:, s - 1 : s - 1 + n]))
    picked = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    und = -(picked * target_mask).sum() / target_mask.sum()

    tokens = model.encode_images(batch["gen_pixel_values"])
    gen_ids, gen_mask = batch["gen_input_ids"], batch["gen_attention_mask"]
    gen_ids = jnp.where(drop[:, None], unconditional_prompt(gen_ids, gen_mask, pad_id), gen_ids)
    embeds = jnp.concatenate(
        [model.embed(gen_ids), model.embed_image_tokens(tokens[:, :-1])], axis=1
    )
    mask = jnp.concatenate([gen_mask, jnp.ones(tokens[:, :-1].shape, bool)], axis=1)
    hidden, _ = model(embeds, positions_from_mask(mask), mask)
    s, p = gen_ids.shape[1], tokens.shape[1]
    logp = jax.nn.log_softmax(model.image_logits(hidden[:, s - 1 : s - 1 + p]))
    picked = jnp.take_along_axis(logp, tokens[..., None], -1)[..., 0]
    return und, picked


def test_sft_loss_matches_a_full_softmax_reference(setup):
    tokenizer, batch, model, step, state = setup
    rng = jax.random.key(7)
    loss, metrics = jax.jit(step.loss)(state.params, state.frozen, batch, rng)
    drop = jax.random.uniform(rng, (PAIRS, 1))[:, 0] < step.config.uncond_fraction
    assert 0 < int(drop.sum()) < PAIRS  # the key drops some rows but not all
    targets = step.answer_ids[batch["und_answer"]]
    target_mask = step.answer_mask[batch["und_answer"]]
    und, picked = _reference_nll(model, batch, targets, target_mask, drop, tokenizer.pad_token_id)
    np.testing.assert_allclose(metrics["und/nll"], und, rtol=1e-5)
    np.testing.assert_allclose(metrics["gen/nll"], -picked[~drop].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["gen/uncond_nll"], -picked[drop].mean(), rtol=1e-5)
    np.testing.assert_allclose(loss, und - picked.mean(), rtol=1e-5)


def test_pairuni_sft_learns_and_writes_a_loadable_model_dir(tmp_path, capsys):
    out = tmp_path / "sft"
    args = [f"out={out}", "steps=30", "log_every=1", "optimizer.learning_rate=0.003"]
    history = run_sft(load_run_config([], args, SFTRunConfig))
    first, last = history[0], history[-1]
    assert last["und/nll"] < 0.5 * first["und/nll"]  # answers: the letter and EOS format
    assert last["gen/nll"] < first["gen/nll"] - 0.3  # image tokens (chance: ln 64 = 4.16)
    model = load_model(out)
    assert model.config == JanusConfig.tiny()
    assert (out / "tokenizer.json").is_file()
    source = random_module(lambda: Janus(JanusConfig.tiny(), rngs=nnx.Rngs(0)), 0)  # init_seed
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.to_pure_dict(nnx.state(source.vqmodel)),
        nnx.to_pure_dict(nnx.state(model.vqmodel)),
    )
    assert cli.main(["sft", *args]) == 2  # out exists: refused before any work
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {out} already exists; choose a new path or pass --overwrite"
    )


def test_generation_images_load_at_their_own_size():
    """The VQ's image side may differ from the understanding encoder's: the generation targets
    load at ``generation_image_size``, from the record's own generation image."""
    import json

    from pairuni_jax.data import images
    from pairuni_jax.data.pipeline import DEMO_PAIRS

    tokenizer = load_tokenizer(TINY_TOKENIZER)
    data = dataclasses.replace(
        demo_data(), pairs_per_host=2, generation_images=True, generation_image_size=16
    )
    batch = next(
        PairPipeline(data, tokenizer, lambda t: np.zeros((len(t), 77), np.int32)).iterator()
    )
    assert batch["und_pixel_values"].shape == (2, 32, 32, 3)
    assert batch["gen_pixel_values"].shape == (2, 16, 16, 3)
    lines = DEMO_PAIRS.read_text().splitlines()
    for row, index in zip(batch["gen_pixel_values"], batch["record_index"], strict=True):
        path = DEMO_PAIRS.parent / json.loads(lines[index])["generate_ann"]["image_path"]
        np.testing.assert_array_equal(row, images.load_and_preprocess(path, 16))
