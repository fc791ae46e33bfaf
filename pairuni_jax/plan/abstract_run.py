"""The train step of a ``RunConfig`` built from abstract inputs, ready to lower and compile.

Built exactly as ``train.setup`` builds it (``train.make_train_step``), but the policy and the HPS
model come from ``nnx.eval_shape`` and the train state, reward state, batch and PRNG key are
``jax.ShapeDtypeStruct`` with the shardings the trainer gives them: no parameter is ever
materialised, so a 7B step lowers on a laptop.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from pairuni_jax import sharding
from pairuni_jax import train as train_lib
from pairuni_jax.checkpoint import convert as janus_convert
from pairuni_jax.checkpoint import hf_config, hf_reader, model_dir
from pairuni_jax.data.pipeline import HPS_CONTEXT_LENGTH
from pairuni_jax.data.prompts import SpecialIds, load_tokenizer
from pairuni_jax.flops import Chip
from pairuni_jax.models import lora
from pairuni_jax.models.clip import CLIP, CLIPConfig
from pairuni_jax.models.janus import Janus, JanusConfig
from pairuni_jax.rewards.accuracy import LetterTableArrays, tag_patterns
from pairuni_jax.rl import optimizer as opt_lib
from pairuni_jax.rl.train_step import init_train_state, split_policy
from pairuni_jax.run_config import RunConfig


def device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ``ShapeDtypeStruct`` (the largest shard);
    host values (the step's flags) are replicated: each device holds all of them."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        sharding_ = getattr(leaf, "sharding", None)
        shard = leaf.shape if sharding_ is None else sharding_.shard_shape(leaf.shape)
        total += math.prod(shard) * leaf.dtype.itemsize
    return total


def kept_argument_indices(lowered: jax.stages.Lowered) -> set[int]:
    """Indices (into the flattened arguments) of the arguments the compiled program takes.

    jit drops the arguments the program never reads; which ones survive is recorded only on the
    lowering's private ``compile_args`` (jax 0.10), so this is the one place that reads it.
    """
    return set(lowered._lowering.compile_args["kept_var_idx"])


def policy_config(config: RunConfig) -> tuple[JanusConfig, str]:
    """The policy's JanusConfig and where it came from (never loads weights)."""
    section = config.model
    if section.path is None:
        return JanusConfig.preset(section.preset), f"preset {section.preset} (random init)"
    path = Path(section.path).expanduser()
    if (path / model_dir.PARAMS_SUBDIR).is_dir():
        return janus_convert.read_model_config(path)[0], str(path)
    if (path / hf_reader.CONFIG_FILE).is_file():  # a Hugging Face checkpoint
        ckpt = hf_reader.HFCheckpoint(path)
        where = str(ckpt.directory / hf_reader.CONFIG_FILE)
        return hf_config.from_checkpoint(ckpt.hf_shapes(), ckpt.config, ckpt.format, where), where
    if section.preset == "tiny":
        raise ValueError(
            f"model.path {path} is not here, so plan cannot read the model's config.json: "
            f"name the architecture with model.preset=janus_pro_1b or janus_pro_7b"
        )
    return JanusConfig.preset(section.preset), f"preset {section.preset} ({path} not here)"


def reward_config(config: RunConfig) -> tuple[CLIPConfig, str]:
    """The HPS model's CLIPConfig: the reward directory's, ViT-H-14 when it is not here, or the
    tiny random CLIP of the demo."""
    if config.reward.path is None:
        return CLIPConfig.tiny(), "tiny (random init)"
    path = Path(config.reward.path).expanduser()
    if (path / model_dir.CONFIG_FILE).is_file():
        return CLIPConfig.from_dict(model_dir.read_config(path)["clip"]), str(path)
    return CLIPConfig.vit_h_14(), f"ViT-H-14 ({path} not here)"


def _tokenizer_dir(config: RunConfig) -> Path | None:
    section = config.model
    if section.tokenizer is not None:
        return Path(section.tokenizer).expanduser()
    if section.path is None:
        return train_lib.TINY_TOKENIZER
    path = Path(section.path).expanduser()
    return path if path.is_dir() else None


def _special_ids_and_tags(
    config: RunConfig, model_config: JanusConfig
) -> tuple[SpecialIds, tuple[Any, Any]]:
    """Token ids (constants of the program) and the answer-tag pattern arrays (or None).

    Without a tokenizer the ids are placeholders: they change no shape, FLOP or byte.
    """
    directory = _tokenizer_dir(config)
    tag = config.reward.answer_tag
    if directory is None or not directory.is_dir():
        if tag is not None:
            raise ValueError(
                "reward.answer_tag is set but no tokenizer is here to size its patterns: set "
                "model.tokenizer to a directory with the model's tokenizer files"
            )
        image = model_config.image_token_id
        return SpecialIds(0, 1, 2, image, image + 1, image + 2), (None, None)
    tokenizer = load_tokenizer(directory)
    ids = SpecialIds.from_tokenizer(tokenizer)
    if tag is None:
        return ids, (None, None)
    return ids, (tag_patterns(tokenizer, tag[0]), tag_patterns(tokenizer, tag[1]))


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _replicated(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            np.shape(x), jnp.result_type(x), sharding=NamedSharding(mesh, PartitionSpec())
        ),
        tree,
    )


def abstract_batch(config: RunConfig, global_pairs: int, sharding_: NamedSharding) -> dict:
    """The step's batch (``data.pipeline`` keys) as sharded ``ShapeDtypeStruct``."""
    d = config.data
    p, s = global_pairs, d.image_size
    shapes = {
        "und_input_ids": ((p, d.max_und_len), jnp.int32),
        "und_attention_mask": ((p, d.max_und_len), jnp.bool_),
        "und_pixel_values": ((p, s, s, 3), jnp.float32),
        "und_answer": ((p,), jnp.int32),
        "und_num_options": ((p,), jnp.int32),
        "gen_input_ids": ((p, d.max_gen_len), jnp.int32),
        "gen_attention_mask": ((p, d.max_gen_len), jnp.bool_),
        "hps_input_ids": ((p, HPS_CONTEXT_LENGTH), jnp.int32),
        "similarity": ((p,), jnp.float32),
        "pair_weight_aligned": ((p,), jnp.bool_),
        "record_index": ((p,), jnp.int32),
    }
    return {
        k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding_)
        for k, (shape, dtype) in shapes.items()
    }


@dataclasses.dataclass
class AbstractRun:
    """The train step of a config with abstract, sharded inputs (nothing materialised)."""

    step_fn: Any  # rl.train_step.TrainStep
    state: Any  # TrainState of ShapeDtypeStruct
    batch: dict[str, jax.ShapeDtypeStruct]
    rng: jax.ShapeDtypeStruct
    model_config: JanusConfig
    hps_config: CLIPConfig
    sources: dict[str, str]  # where each config came from

    def argument_bytes(self, lowered: jax.stages.Lowered) -> dict[str, int]:
        """Bytes per device of the step's arguments, grouped by what they hold.

        jit drops the arguments the program never reads (``record_index``, say); they are left
        out, so the groups add up to ``memory_analysis().argument_size_in_bytes``.
        """
        s = self.state
        groups = {
            "trainable parameters": s.params,
            "frozen parameters": s.frozen,
            "reference parameters": s.ref_params,
            "optimizer state": (s.opt_state, s.step),
            "reward model (HPS, letter table)": self.step_fn.reward_state,
            "batch, PRNG key and flags": (self.batch, self.rng, self.step_fn.skip_nonfinite),
        }
        group_of = {
            id(leaf): name for name, tree in groups.items() for leaf in jax.tree.leaves(tree)
        }
        kept = kept_argument_indices(lowered)
        out = {name: 0 for name, tree in groups.items() if tree is not None}
        for i, leaf in enumerate(jax.tree.leaves(self.args())):
            if i in kept:
                out[group_of[id(leaf)]] += device_bytes(leaf)
        return out

    def args(self) -> tuple:
        """The step's arguments, in the order the compiled program takes them."""
        return self.step_fn.arguments(self.state, self.batch, self.rng)

    def lower(self) -> jax.stages.Lowered:
        return self.step_fn.lower(self.state, self.batch, self.rng)


def build_abstract_run(
    config: RunConfig, mesh: jax.sharding.Mesh, hosts: int = 1, chip: Chip | None = None
) -> AbstractRun:
    """The step ``train.setup`` would build for ``config`` on ``mesh``, from abstract inputs.

    hosts: processes feeding the step (global batch = ``data.pairs_per_host`` × hosts).
    chip: the target chip (its HBM resolves ``grpo.rollout.layout=auto``), or None.
    """
    model_config, model_source = policy_config(config)
    hps_config, hps_source = reward_config(config)
    data = train_lib.data_for_model(config, model_config)
    global_pairs = data.pairs_per_host * hosts
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if hosts > 1 and global_pairs % ways:
        raise ValueError(
            f"data.pairs_per_host × hosts = {global_pairs} pairs do not split over the "
            f"data × fsdp = {ways} batch shards of the mesh"
        )
    train_lib.check_rollout_rows(config, mesh, global_pairs)

    m = config.model

    def make_policy() -> Janus:
        policy = Janus(
            model_config,
            dtype=m.dtype.dtype,
            param_dtype=m.param_dtype.dtype,
            scan_layers=m.scan_layers,
            remat=m.remat,
            rngs=nnx.Rngs(0),
        )
        return policy if m.lora is None else lora.adapt(policy, m.lora)

    policy = nnx.eval_shape(make_policy)
    optimizer = opt_lib.make_optimizer(config.optimizer)
    graphdef = split_policy(policy, config.grpo.frozen_modules)[0]
    full_graphdef, policy_state = nnx.split(policy)
    state = jax.eval_shape(
        lambda s: init_train_state(nnx.merge(full_graphdef, s), config.grpo, optimizer)[1],
        policy_state,
    )
    state = _abstract(state, sharding.tree_shardings(state, mesh))

    hps = nnx.eval_shape(
        lambda: CLIP(hps_config, dtype=config.reward.dtype.dtype, rngs=nnx.Rngs(0))
    )
    hps_graphdef, hps_params = nnx.split(hps)
    ids, (open_tag, close_tag) = _special_ids_and_tags(config, model_config)
    letters = LetterTableArrays(
        jax.ShapeDtypeStruct((model_config.text.vocab_size, 2), jnp.int32), open_tag, close_tag
    )
    reward_state = {
        "hps": _abstract(hps_params, sharding.state_shardings(hps_params, mesh)),
        "letters": _replicated(letters, mesh),
    }
    layout = train_lib.decode_layout(config, model_config, mesh, global_pairs, chip)
    step_fn = train_lib.make_train_step(
        config, graphdef, optimizer, hps_graphdef, reward_state, ids, layout
    )
    batch = abstract_batch(config, global_pairs, train_lib.batch_sharding(mesh, global_pairs))
    rng = jax.ShapeDtypeStruct(
        (), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=sharding.replicated(mesh)
    )
    return AbstractRun(
        step_fn,
        state,
        batch,
        rng,
        model_config,
        hps_config,
        {"model": model_source, "reward": hps_source},
    )
