"""``pairuni generate`` and ``pairuni answer`` end to end on a tiny model directory."""

import argparse
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from pairuni_jax.checkpoint import model_dir
from pairuni_jax.commands import answer, generate
from pairuni_jax.data import images, prompts
from pairuni_jax.models.janus import Janus, JanusConfig
from pairuni_jax.rollout import image as image_rollout
from pairuni_jax.rollout import text as text_rollout

TOKENIZER = Path(__file__).resolve().parents[1] / "pairuni_jax" / "assets" / "tiny_tokenizer"


def _random_params(abstract):
    """Random weights without running the initialisers (fast): N(0, 0.05²), norm scales 1 + that."""
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        x = rng.normal(0.0, 0.05, leaf.shape).astype(leaf.dtype)
        return x + 1 if path[-1].key == "scale" else x

    return jax.tree_util.tree_map_with_path(draw, abstract)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random model whose image token id is the tiny tokenizer's, saved with it."""
    tokenizer = prompts.load_tokenizer(TOKENIZER)
    ids = prompts.SpecialIds.from_tokenizer(tokenizer)
    config = dataclasses.replace(JanusConfig.tiny(), image_token_id=ids.image)
    abstract = nnx.eval_shape(lambda: Janus(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    params = _random_params(nnx.to_pure_dict(state))
    # Spread the generation head so the random model's images are not one repeated token.
    params["generation_head"]["vision_head"]["kernel"] *= 30.0
    directory = tmp_path_factory.mktemp("model") / "tiny"
    meta = {"kind": "janus", "janus": config.to_dict(), "dtype": "float32"}
    model_dir.save_model_dir(directory, params, meta, files=sorted(TOKENIZER.iterdir()))
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    model = nnx.merge(graphdef, state)
    return directory, model, prompts.PromptEncoder(tokenizer, config.num_image_tokens)


def _run(argv):
    parser = argparse.ArgumentParser(prog="pairuni")
    subparsers = parser.add_subparsers()
    generate.register(subparsers)
    answer.register(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


def test_generate_writes_the_images_of_the_rollout(tiny_dir, tmp_path, capsys):
    directory, model, encoder = tiny_dir
    out = tmp_path / "images"
    code = _run(
        [
            "generate",
            "--model",
            str(directory),
            "--prompt",
            "A red circle.",
            "--n",
            "3",
            "--cfg",
            "4",
            "--temperature",
            "0.9",
            "--seed",
            "5",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr()
    size = model.config.vq.image_size
    written = np.stack([np.asarray(Image.open(out / f"{i:03d}.png")) for i in range(3)])
    assert written.shape == (3, size, size, 3)
    assert np.asarray(Image.open(out / "grid.png")).shape == (2 * size, 2 * size, 3)
    ids = jnp.asarray(np.tile(encoder.generation_ids("A red circle."), (3, 1)))
    settings = image_rollout.ImageSettings(encoder.ids.pad, cfg_weight=4.0, temperature=0.9)
    rollout = image_rollout.sample_images_jit(
        model, ids, jnp.ones(ids.shape, bool), jax.random.key(5), settings
    )
    assert len({tuple(row) for row in np.asarray(rollout.tokens)}) == 3
    want = np.asarray(image_rollout.decode_images_jit(model, rollout.tokens))
    np.testing.assert_array_equal(written, want)
    assert "tokens/s" in capsys.readouterr().out


def test_answer_prints_the_decoded_greedy_answer(tiny_dir, tmp_path, capsys):
    directory, model, encoder = tiny_dir
    picture = tmp_path / "wide.png"
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(picture)
    question = "What colour is the circle?"
    code = _run(
        [
            "answer",
            "--model",
            str(directory),
            "--image",
            str(picture),
            "--question",
            question,
            "--max-new-tokens",
            "12",
            "--greedy",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured
    ids = jnp.asarray(encoder.understanding_ids(question)[None])
    settings = text_rollout.TextSettings(
        eos_id=encoder.ids.eos, pad_id=encoder.ids.pad, max_new_tokens=12, greedy=True
    )
    image = images.load_and_preprocess(picture, model.config.vision.image_size)
    rollout = text_rollout.sample_text_jit(
        model,
        ids,
        jnp.ones(ids.shape, bool),
        jnp.asarray(image[None]),
        None,
        jax.random.key(0),
        settings,
    )
    tokens = np.asarray(rollout.tokens[0, : int(rollout.lengths[0])]).tolist()
    want = encoder.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    assert want
    assert captured.out.strip() == want


def test_bad_inputs_fail_with_a_message(tiny_dir, tmp_path, capsys):
    directory, _, _ = tiny_dir
    assert (
        _run(["generate", "--model", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "not an Orbax model directory" in capsys.readouterr().out
    assert (
        _run(
            [
                "answer",
                "--model",
                str(directory),
                "--image",
                str(tmp_path / "missing.png"),
                "--question",
                "Why?",
            ]
        )
        == 2
    )
    assert "missing.png" in capsys.readouterr().out
    assert (
        _run(
            [
                "generate",
                "--model",
                str(directory),
                "--prompt",
                "x",
                "--temperature",
                "0",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "temperature" in capsys.readouterr().out
