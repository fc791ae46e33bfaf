"""A LoRA Pair-GRPO run end to end (``model.lora``) on a tiny Hugging Face checkpoint saved with
``save_pretrained``: only the adapters train, the base stays bit-identical, checkpoints hold the
adapters and their optimizer state only, resume is exact, and both exports (merged, and PEFT
adapters) give the adapted JAX model's logits in transformers."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
import torch
import transformers
import yaml
from flax import nnx

from pairuni_jax import cli
from pairuni_jax import config as config_lib
from pairuni_jax.checkpoint import lora_adapters
from pairuni_jax.data.pipeline import TINY_TOKENIZER
from pairuni_jax.models import lora
from pairuni_jax.models.janus import JanusConfig, positions_from_mask
from pairuni_jax.run_config import load_run_config
from pairuni_jax.train import Trainer
from tests import reference

STEPS = 4
FAST = [
    f"steps={STEPS}",
    "checkpoint.every=2",
    "checkpoint.async_save=false",
    "logging.samples_every=0",
    "grpo.rollout.num_und_rollouts=2",
    "grpo.rollout.num_gen_rollouts=2",
    "grpo.rollout.max_new_tokens=8",
    "data.pairs_per_host=4",
    "optimizer.learning_rate=0.01",
    f"model.tokenizer={TINY_TOKENIZER}",
    "model.lora={rank: 4, alpha: 8, base_dtype: fp32, targets: '"
    + lora.DEFAULT_TARGETS
    + "|lm_head|generation_head/.*'}",
]
ADAPTER_KEYS = ("kernel_lora_a", "kernel_lora_b")


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _timeless(m):  # wall-clock and throughput values differ between runs
    return {k: v for k, v in m.items() if k not in ("time", "step_seconds") and "per_s" not in k}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The uninterrupted run: (its dir, the base checkpoint, its overrides, state before, after)."""
    tmp = tmp_path_factory.mktemp("lora_run")
    base_dir = tmp / "base_hf"
    reference.tiny_hf_model(JanusConfig.tiny(), seed=0).save_pretrained(base_dir)
    overrides = [*FAST, f"model.path={base_dir}"]
    run_dir = tmp / "full"
    trainer = Trainer(load_run_config([], [f"run_dir={run_dir}", *overrides]))
    before = jax.tree.map(np.asarray, (trainer.run.state.params, trainer.run.state.frozen))
    trainer.run_steps()
    return run_dir, base_dir, overrides, before, trainer


def _adapted_model(trainer):
    state = trainer.run.state
    return nnx.merge(trainer.run.step_fn.graphdef, state.params, state.frozen)


def test_only_adapters_train_and_the_base_stays_bit_identical(run):
    _, _, _, (params0, frozen0), trainer = run
    state = trainer.run.state
    flat = nnx.to_flat_state(state.params)
    assert flat and all(path[-1] in ADAPTER_KEYS for path, _ in flat)
    sizes = [x.size for x in jax.tree.leaves(state.params)]
    moments = [x.size for x in jax.tree.leaves(state.opt_state) if x.ndim]
    assert sorted(moments) == sorted(sizes * 2)  # Adam's mu and nu of the adapters only
    same = jax.tree.map(lambda x, y: np.array_equal(x, np.asarray(y)), frozen0, state.frozen)
    assert all(jax.tree.leaves(same))
    # Every adapter of the shared LLM layers learned, in every layer, and the image head's.
    for path, (_, b) in lora.adapter_matrices(_adapted_model(trainer)).items():
        b = np.asarray(b).reshape(-1, *b.shape[-2:])
        if path != ("lm_head",):  # text-only: moves when some understanding group has signal
            assert np.all(np.abs(b).max(axis=(1, 2)) > 0), path
    moved = jax.tree.map(lambda x, y: not np.array_equal(x, np.asarray(y)), params0, state.params)
    assert all(jax.tree.leaves(moved["language_model"]))


def test_checkpoints_hold_only_the_adapters_and_their_optimizer_state(run):
    run_dir, *_ = run
    metadata = ocp.StandardCheckpointer().metadata(run_dir / "checkpoints" / str(STEPS) / "state")
    tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata.tree
    params = jax.tree_util.tree_flatten_with_path(tree["params"])[0]
    keys = [[str(getattr(k, "key", k)) for k in path] for path, _ in params]
    names = {k[-2] if k[-1] == "value" else k[-1] for k in keys}  # an nnx.Variable's "value"
    assert names == set(ADAPTER_KEYS), names
    opt_leaves = [leaf for leaf in jax.tree.leaves(tree["opt_state"]) if leaf.shape]
    assert sum(np.prod(leaf.shape) for leaf in opt_leaves) == 2 * sum(
        np.prod(leaf.shape) for _, leaf in params
    )


def test_resume_reproduces_the_uninterrupted_run(run, tmp_path):
    full_dir, _, overrides, _, _ = run
    part = tmp_path / "part"
    Trainer(load_run_config([], [f"run_dir={part}", *overrides, "steps=2"])).run_steps()
    resumed = Trainer(load_run_config([], [f"run_dir={part}", *overrides]), ("steps",))
    assert resumed.run.start_step == 2
    resumed.run_steps()
    full, parted = _metrics(full_dir), _metrics(part)
    assert [m["step"] for m in parted] == list(range(1, STEPS + 1))
    for a, b in zip(full, parted):
        assert _timeless(a) == _timeless(b)


def _jax_logits(model, ids, mask):
    hidden, _ = model(model.embed(ids), positions_from_mask(mask), mask)
    return model.text_logits(hidden), model.image_logits(hidden)


def _torch_logits(hf, ids, mask):
    with torch.no_grad():
        out = hf(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            output_hidden_states=True,
        )
        image = hf.model.generation_head(out.hidden_states[-1])
    return out.logits.numpy(), image.numpy()


@pytest.fixture(scope="module")
def prompt_and_logits(run):
    """A random prompt and the trained adapted JAX model's (text, image) logits on it."""
    ids = np.random.default_rng(0).integers(8, 1000, (1, 12)).astype(np.int64)
    mask = np.ones((1, 12), bool)
    logits = jax.jit(_jax_logits)(_adapted_model(run[4]), jnp.asarray(ids), jnp.asarray(mask))
    return ids, mask, tuple(map(np.asarray, logits))


def test_export_merges_the_adapters_into_a_transformers_checkpoint(
    run, prompt_and_logits, tmp_path
):
    run_dir, base_dir, *_ = run
    ids, mask, (text, image) = prompt_and_logits
    out = tmp_path / "merged"
    assert cli.main(["export", str(run_dir), str(out)]) == 0
    hf = transformers.JanusForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    hf_text, hf_image = _torch_logits(hf, ids, mask)
    np.testing.assert_allclose(hf_text, text, atol=1e-5, rtol=0)
    np.testing.assert_allclose(hf_image, image, atol=1e-5, rtol=0)
    base = transformers.JanusForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    assert np.abs(_torch_logits(base, ids, mask)[0] - text).max() > 1e-3  # the adapters count


def test_export_adapters_only_loads_with_peft_onto_the_base(run, prompt_and_logits, tmp_path):
    run_dir, base_dir, *_ = run
    ids, mask, (text, image) = prompt_and_logits
    out = tmp_path / "adapters"
    assert cli.main(["export", str(run_dir), str(out), "--adapters-only"]) == 0
    names = {p.name for p in out.iterdir()}  # beside the destination guard's marker file
    assert {lora_adapters.ADAPTER_CONFIG, lora_adapters.ADAPTER_WEIGHTS} <= names, names
    tensors = safetensors.numpy.load_file(out / lora_adapters.ADAPTER_WEIGHTS)
    a = tensors["base_model.model.model.language_model.layers.1.mlp.up_proj.lora_A.weight"]
    b = tensors["base_model.model.model.language_model.layers.1.mlp.up_proj.lora_B.weight"]
    text_config = JanusConfig.tiny().text
    assert a.shape == (4, text_config.hidden_size)
    assert b.shape == (text_config.intermediate_size, 4)
    config = json.loads((out / lora_adapters.ADAPTER_CONFIG).read_text())
    assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (
        4,
        8.0,
        str(base_dir),
    )
    # transformers' PEFT integration puts them on the base checkpoint the run started from.
    hf = transformers.JanusForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    hf.load_adapter(str(out))
    hf_text, hf_image = _torch_logits(hf, ids, mask)
    np.testing.assert_allclose(hf_text, text, atol=1e-5, rtol=0)
    np.testing.assert_allclose(hf_image, image, atol=1e-5, rtol=0)


def test_adapters_only_needs_a_lora_run(tmp_path, capsys):
    """A full fine-tuning run has no adapters: a named error, nothing written."""
    run_dir = tmp_path / "full_ft"
    (run_dir / "checkpoints").mkdir(parents=True)
    config = load_run_config([], [f"run_dir={run_dir}"])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_lib.to_dict(config)))
    out = tmp_path / "x"
    assert cli.main(["export", str(run_dir), str(out), "--adapters-only"]) == 1
    assert "no model.lora" in capsys.readouterr().err
    assert not out.exists()
