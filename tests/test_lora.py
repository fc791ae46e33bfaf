"""LoRA adapters on the policy (models/lora.py, qwix): exact at initialisation, only adapters
trained, the base frozen bit for bit, sharded by logical axes, named errors for bad settings."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pairuni_jax import sharding
from pairuni_jax.config import ConfigError
from pairuni_jax.models import lora
from pairuni_jax.models.janus import Janus, positions_from_mask
from pairuni_jax.models.random_init import random_module
from pairuni_jax.rl.policy import ImageLogprob
from pairuni_jax.run_config import load_run_config
from tests import train_fixtures as fx

EVERY_HEAD = lora.DEFAULT_TARGETS + "|lm_head|generation_head/.*"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _base() -> Janus:
    return random_module(lambda: Janus(fx.CONFIG, rngs=nnx.Rngs(0)), 0)


def _logits(model: Janus, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """Text logits [1, T, V] and image logits [1, T, C] of a random prompt."""
    ids = jax.random.randint(jax.random.key(seed), (1, 12), 8, fx.CONFIG.text.vocab_size)
    mask = jnp.ones((1, 12), bool)
    hidden, _ = model(model.embed(ids), positions_from_mask(mask), mask)
    return model.text_logits(hidden), model.image_logits(hidden)


@pytest.fixture(scope="module")
def base():
    return _base()


@pytest.fixture(scope="module")
def adapted():
    """Adapters on every projection and both heads, the base stored in bf16 (the default)."""
    return lora.add_adapters(_base(), lora.LoraConfig(rank=4, alpha=8.0, targets=EVERY_HEAD))


def _rounded(model: Janus, dtype) -> Janus:
    """``model`` with every floating parameter rounded to ``dtype`` (and kept in its own)."""
    out = nnx.clone(model)
    state = nnx.state(out, nnx.Param)
    nnx.update(out, jax.tree.map(lambda x: x.astype(dtype).astype(x.dtype), state))
    return out


def test_default_targets_are_the_llm_projections(base):
    found = lora.find_targets(base, lora.LoraConfig())
    want = {
        ("language_model", "layers", "self_attn" if p[0] in "qkvo" else "mlp", p)
        for p in PROJECTIONS
    }
    assert set(found) == want


def test_at_init_the_adapted_model_computes_the_base_model(base, adapted):
    base_params = nnx.state(adapted, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    assert {x.dtype for x in jax.tree.leaves(base_params)} == {jnp.dtype(jnp.bfloat16)}
    adapters = nnx.state(adapted, nnx.LoRAParam)
    assert {x.dtype for x in jax.tree.leaves(adapters)} == {jnp.dtype(jnp.float32)}
    text, image = jax.jit(_logits)(adapted)
    base_text, base_image = jax.jit(_logits)(_rounded(base, jnp.bfloat16))
    np.testing.assert_array_equal(np.asarray(text), np.asarray(base_text))
    np.testing.assert_array_equal(np.asarray(image), np.asarray(base_image))
    # ... and the adapters are there: a nonzero B changes the logits.
    perturbed = nnx.clone(adapted)
    nnx.update(perturbed, jax.tree.map(lambda x: x + 0.05, nnx.state(adapted, nnx.LoRAParam)))
    text, image = jax.jit(_logits)(perturbed)
    assert np.abs(np.asarray(text - base_text)).max() > 1e-3
    assert np.abs(np.asarray(image - base_image)).max() > 1e-3


def test_adapters_have_one_pair_per_layer_and_are_sharded_by_logical_axes(adapted, mesh):
    L, R = fx.CONFIG.text.num_layers, 4
    matrices = lora.adapter_matrices(adapted)
    assert len(matrices) == len(PROJECTIONS) + 1 + 2  # + lm_head + generation_head's two
    up_a, up_b = matrices[("language_model", "layers", "mlp", "up_proj")]
    assert up_a.shape == (L, fx.CONFIG.text.hidden_size, R)
    assert up_b.shape == (L, R, fx.CONFIG.text.intermediate_size)
    assert not np.any(np.asarray(up_b)) and np.all(np.std(np.asarray(up_a), axis=(1, 2)) > 0)
    assert not np.array_equal(np.asarray(up_a[0]), np.asarray(up_a[1]))  # one A per layer

    specs = sharding.state_shardings(nnx.state(adapted, nnx.LoRAParam), mesh)
    up = specs["language_model"]["layers"]["mlp"]["up_proj"]
    assert up["kernel_lora_a"].spec == sharding.logical_to_spec(("layers", "embed", "lora_rank"))
    assert up["kernel_lora_b"].spec == sharding.logical_to_spec(("layers", "lora_rank", "mlp"))
    assert up["kernel_lora_a"].spec == jax.P(None, "fsdp", None)
    for path, var in nnx.iter_graph(adapted):
        if isinstance(var, nnx.LoRAParam):
            names = var.get_metadata()["out_sharding"]
            assert len(names) == var.ndim and None not in names, (path, names)


def test_bad_settings_are_named(base):
    with pytest.raises(lora.LoraError, match=r"targets 'vision/.\*' matches no Linear"):
        lora.find_targets(base, lora.LoraConfig(targets="vision/.*"))
    with pytest.raises(lora.LoraError, match="matches vision_model/.*adapters go on"):
        lora.find_targets(base, lora.LoraConfig(targets="vision_model/.*"))
    with pytest.raises(
        lora.LoraError,
        match=r"rank 4096 is larger than a side of language_model/layers/.*_proj \(kernel",
    ):
        lora.find_targets(base, lora.LoraConfig(rank=4096))
    with pytest.raises(ConfigError, match=r"model.lora: rank must be >= 1, got 0"):
        load_run_config([], ["model.lora={rank: 0}"])
    with pytest.raises(ConfigError, match=r"model.lora.base_dtype: 'fp8' is not one of"):
        load_run_config([], ["model.lora.base_dtype=fp8"])
    assert load_run_config([], ["model.lora.rank=8"]).model.lora == lora.LoraConfig(rank=8)


def test_lora_pair_grpo_raises_both_rewards_above_noise():
    """The learning test of ``test_train_step`` with only rank-8 adapters trained (the
    projections and both heads; the base bf16 as by default): each side's reward rises by
    several times its run-to-run noise (measured: answers 0.49 -> 0.73, images 0.49 -> 1.00,
    noise 0.03).

    Image log-probs are the guided ones, those of the distribution the images are sampled from.
    With conditional log-probs the update raises the conditional branch while the samples come
    from 5·cond − 4·uncond (CFG weight 5); adapters shared by both branches can move the
    unconditional one as much, and the images then learn the wrong way (this same run: images
    0.49 -> 0.002; 0.49 -> 1.00 with an fp32 base: the sign of the margin is luck)."""
    config = fx.grpo_config(
        rollout=fx.RolloutConfig(num_und_rollouts=8, num_gen_rollouts=4, max_new_tokens=8),
        image_logprob=ImageLogprob.GUIDED,
    )
    model = lora.add_adapters(_base(), lora.LoraConfig(rank=8, alpha=16, targets=EVERY_HEAD))
    step, state = fx.build_step(config, *fx.low_half_rewards(), lr=1e-2, model=model)
    gain, noise = fx.reward_gain(step, state, num_steps=20)
    assert np.all(gain > 4 * np.maximum(noise, 0.01)), (gain, noise)


@pytest.mark.parametrize("base_dtype", ["int8", "nf4"])
def test_a_quantised_base_merges_into_the_weights_it_computes_with(base_dtype):
    """QLoRA: the targeted kernels are stored quantised, and ``merged_params`` (what
    ``pairuni export`` writes) dequantises them and adds the adapters, so an unadapted Janus
    loaded from the merged weights computes what the adapted, quantised model does."""
    config = lora.LoraConfig(rank=4, alpha=8.0, targets=EVERY_HEAD, base_dtype=base_dtype)
    adapted = lora.add_adapters(_base(), config)
    quantised = [
        path
        for path, module in lora.find_targets(adapted, config).items()
        if not isinstance(module.kernel, nnx.Variable)
    ]
    assert len(quantised) == len(lora.find_targets(adapted, config))
    adapters = nnx.state(adapted, nnx.LoRAParam)
    noise = jax.random.normal(jax.random.key(1), (len(jax.tree.leaves(adapters)),))
    nnx.update(
        adapted,
        jax.tree.map(
            lambda x, e: x + 0.05 * e,
            adapters,
            jax.tree.unflatten(jax.tree.structure(adapters), list(noise)),
        ),
    )
    merged = nnx.eval_shape(lambda: Janus(fx.CONFIG, rngs=nnx.Rngs(0)))
    state = nnx.state(merged)
    nnx.replace_by_pure_dict(state, lora.merged_params(adapted, config))
    merged = nnx.merge(nnx.graphdef(merged), state)
    text, image = jax.jit(_logits)(adapted)
    want_text, want_image = jax.jit(_logits)(merged)
    np.testing.assert_allclose(np.asarray(text), np.asarray(want_text), atol=1e-5)
    np.testing.assert_allclose(np.asarray(image), np.asarray(want_image), atol=1e-5)
    # The quantisation is real: the same adapters on the unquantised base give other logits.
    exact = lora.add_adapters(_base(), dataclasses.replace(config, base_dtype="fp32"))
    nnx.update(exact, nnx.state(adapted, nnx.LoRAParam))
    exact_text, _ = jax.jit(_logits)(exact)
    assert np.abs(np.asarray(exact_text - text)).max() > 1e-3
