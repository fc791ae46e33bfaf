"""A transformers checkpoint saved with ``tie_word_embeddings: true`` (what
``JanusForConditionalGeneration(JanusConfig(...)).save_pretrained()`` writes by default: no
``lm_head.weight``) converts as transformers loads it, and exports back in the same form."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors
import torch
import transformers

from pairuni_jax.checkpoint import convert, hf_config
from pairuni_jax.models.janus import JanusConfig
from tests import reference

CONFIG = JanusConfig.tiny()


def _stored_keys(directory) -> set[str]:
    keys = set()
    for file in directory.glob("*.safetensors"):
        with safetensors.safe_open(file, framework="numpy") as f:
            keys |= set(f.keys())
    return keys


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """A user's tiny Janus built with transformers' default JanusConfig (tied), perturbed."""
    ours = hf_config.transformers_config(CONFIG, "float32")
    user_config = transformers.JanusConfig(
        text_config=ours.text_config.to_dict(),
        vision_config=ours.vision_config.to_dict(),
        vq_config=ours.vq_config.to_dict(),
        image_token_id=CONFIG.image_token_id,
    )
    torch.manual_seed(0)
    model = transformers.JanusForConditionalGeneration(user_config).eval().float()
    reference.perturb_(model, seed=1)
    directory = tmp_path_factory.mktemp("tied") / "hf"
    model.save_pretrained(directory)
    return model, directory


def test_tied_checkpoint_converts_with_the_embeddings_as_head(tied, tmp_path, capsys):
    model, src = tied
    assert model.config.tie_word_embeddings
    assert "lm_head.weight" not in _stored_keys(src)

    out = convert.hf_to_orbax(src, tmp_path / "orbax", progress=False)
    assert "the LM head is the token embeddings" in capsys.readouterr().err
    config, _ = convert.read_model_config(out)
    assert config.tie_word_embeddings
    flax_model = convert.load_model(out)
    assert flax_model.lm_head is None

    hidden = np.random.default_rng(0).normal(size=(2, 3, CONFIG.text.hidden_size))
    with torch.no_grad():
        want = model.lm_head(torch.from_numpy(hidden).float()).numpy()
    got = np.asarray(flax_model.text_logits(jnp.asarray(hidden, jnp.float32)))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

    back = convert.orbax_to_hf(out, tmp_path / "back", progress=False)
    assert "lm_head.weight" not in _stored_keys(back)
    assert json.loads((back / "config.json").read_text())["tie_word_embeddings"] is True
    loaded = transformers.JanusForConditionalGeneration.from_pretrained(back, dtype=torch.float32)
    assert (
        loaded.lm_head.weight.data_ptr()
        == loaded.model.language_model.embed_tokens.weight.data_ptr()
    )
    want_state, got_state = model.state_dict(), loaded.state_dict()
    assert set(got_state) == set(want_state)
    for key, value in want_state.items():
        np.testing.assert_array_equal(got_state[key].numpy(), value.numpy(), err_msg=key)


def test_tied_model_exports_deepseek_layout_tied_too(tied, tmp_path):
    _, src = tied
    out = convert.hf_to_orbax(src, tmp_path / "orbax", progress=False)
    ds = convert.orbax_to_hf(out, tmp_path / "ds", format="deepseek", progress=False)
    assert "language_model.lm_head.weight" not in _stored_keys(ds)
    config = json.loads((ds / "config.json").read_text())
    assert config["language_config"]["tie_word_embeddings"] is True
    again = convert.hf_to_orbax(ds, tmp_path / "again", progress=False)
    assert convert.read_model_config(again)[0].tie_word_embeddings
    np.testing.assert_array_equal(
        convert.restore_numpy(again)["language_model"]["embed_tokens"]["embedding"],
        convert.restore_numpy(out)["language_model"]["embed_tokens"]["embedding"],
    )


def test_untied_config_without_a_head_is_still_missing_a_key(tied, tmp_path):
    _, src = tied
    untied = tmp_path / "untied"
    untied.mkdir()
    for file in src.iterdir():
        (untied / file.name).write_bytes(file.read_bytes())
    config = json.loads((untied / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (untied / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="missing key 'lm_head.weight'"):
        convert.hf_to_orbax(untied, tmp_path / "out", progress=False)
