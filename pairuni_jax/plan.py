"""``pairuni plan``: per-device memory, FLOPs and step time of the real train step, before launch.

Builds the step of a ``RunConfig`` exactly as ``train.setup`` does (``train.make_train_step``),
but from abstract inputs: the policy and the HPS model come from ``nnx.eval_shape``, the train
state, reward state, batch and PRNG key are ``jax.ShapeDtypeStruct`` with the shardings the
trainer gives them, so no parameter is ever materialised. The step is lowered and compiled for a
mesh over the target devices: fake CPU devices (any count), or a real TPU topology's
compile-only devices (``jax.experimental.topologies``, when libtpu is installed). Then:

- memory per device from ``compiled.memory_analysis()``: the arguments split by what they hold
  (parameters, optimizer state, reward model, batch), the outputs that do not alias a donated
  argument, and the temporaries (activations, the rollout KV caches, gradients); the analytic
  KV-cache size is shown as part of the temporaries;
- FLOPs per step: the analytic model count (``flops.step_flops``) split into rollout and
  training, and the matmul FLOPs XLA compiled per device, read from the optimised HLO with every
  loop body multiplied by its trip count (``compiled.cost_analysis()`` counts a loop body once,
  so on this program it is far too low), split by whether an op belongs to the gradient;
- the bytes each device moves in collectives per step (same loop accounting);
- a projected step time: compute-bound parts at ``mfu`` × the chip's peak bf16 FLOP/s, the
  rollout decode loops no faster than reading the weights and the KV cache from HBM each token.

Compiled on CPU, the memory numbers are XLA:CPU's (no TPU layout padding, different fusion);
with a TPU topology they are the TPU compiler's.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from pairuni_jax import flops as flops_lib
from pairuni_jax import sharding
from pairuni_jax import train as train_lib
from pairuni_jax.checkpoint import convert as janus_convert
from pairuni_jax.checkpoint import hf_config, hf_reader, model_dir
from pairuni_jax.data.pipeline import HPS_CONTEXT_LENGTH
from pairuni_jax.data.prompts import SpecialIds, load_tokenizer
from pairuni_jax.flops import GIB, Chip
from pairuni_jax.models.clip import CLIP, CLIPConfig
from pairuni_jax.models.janus import Janus, JanusConfig
from pairuni_jax.rewards.accuracy import LetterTableArrays, tag_patterns
from pairuni_jax.rl import optimizer as opt_lib
from pairuni_jax.rl.train_step import init_train_state, split_policy
from pairuni_jax.run_config import RunConfig

# -- targets -------------------------------------------------------------------------------------

# Slice name -> (chip, JAX devices, hosts). TPU v4 and v5p names count TensorCores (two per chip,
# one JAX device per chip); v5e and v6e names count chips. Hosts hold 4 chips, except the
# single-host 8-chip v5e-8 and v6e-8 (cloud.google.com/tpu/docs/v5e, /v6e, /v5p, /v4). The TPU
# topology strings are those ``jax.experimental.topologies.get_topology_desc`` takes (as used by
# MaxText's train_compile.py).
SLICE_PATTERN = re.compile(r"^(v4|v5p|v5e|v6e|h100|h200)-(\d+)$")
TPU_TOPOLOGIES = {
    "v4-8": "v4:2x2x1",
    "v4-16": "v4:2x2x2",
    "v4-32": "v4:2x2x4",
    "v5p-8": "v5:2x2x1",
    "v5p-16": "v5:2x2x2",
    "v5p-32": "v5:2x2x4",
    "v5p-64": "v5:2x4x4",
    "v5e-4": "v5e:2x2",
    "v5e-8": "v5e:2x4",
    "v5e-16": "v5e:4x4",
    "v5e-32": "v5e:4x8",
    "v5e-64": "v5e:8x8",
    "v5e-128": "v5e:8x16",
    "v5e-256": "v5e:16x16",
    "v6e-4": "v6e:2x2",
    "v6e-8": "v6e:2x4",
    "v6e-16": "v6e:4x4",
    "v6e-32": "v6e:4x8",
    "v6e-64": "v6e:8x8",
    "v6e-256": "v6e:16x16",
}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A target slice: its chip, its number of chips (JAX devices) and hosts."""

    name: str
    chip: Chip
    chips: int
    hosts: int

    @classmethod
    def parse(cls, name: str) -> Slice:
        """``v5e-64``, ``v5p-16``, ``v4-8``, ``v6e-8``, ``h100-8``, ``h200-1``."""
        match = SLICE_PATTERN.match(name)
        if not match:
            raise ValueError(
                f"--topology {name!r}: expected <chip>-<size> with chip one of "
                f"v4, v5p, v5e, v6e, h100, h200 (e.g. v5e-64, v5p-16, h100-8)"
            )
        kind, size = match.group(1), int(match.group(2))
        chip = flops_lib.CHIPS[kind]
        chips = size // 2 if kind in ("v4", "v5p") else size
        if chips < 1:
            raise ValueError(f"--topology {name!r}: no whole chip in {size} cores")
        if kind in ("h100", "h200"):
            hosts = math.ceil(chips / 8)
        elif kind in ("v5e", "v6e") and chips <= 8:
            hosts = 1
        else:
            hosts = math.ceil(chips / 4)
        return cls(name, chip, chips, hosts)


def tpu_topology_devices(target: Slice) -> list[jax.Device] | None:
    """The compile-only devices of a TPU slice when libtpu is installed, else None."""
    if target.name not in TPU_TOPOLOGIES:
        return None
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return None
    from jax.experimental import topologies

    return list(topologies.get_topology_desc(TPU_TOPOLOGIES[target.name], platform="tpu").devices)


# -- the abstract run ----------------------------------------------------------------------------


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
            "batch and PRNG key": (self.batch, self.rng),
        }
        group_of = {
            id(leaf): name for name, tree in groups.items() for leaf in jax.tree.leaves(tree)
        }
        # Which flat arguments survive is only recorded on the (non-public) lowering.
        kept = lowered._lowering.compile_args["kept_var_idx"]
        out = {name: 0 for name, tree in groups.items() if tree is not None}
        for i, leaf in enumerate(jax.tree.leaves(self.args())):
            if i in kept:
                out[group_of[id(leaf)]] += _device_bytes(leaf)
        return out

    def args(self) -> tuple:
        """The step's arguments, in the order the compiled program takes them."""
        return (self.state, self.batch, self.rng, self.step_fn.reward_state)

    def lower(self) -> jax.stages.Lowered:
        return self.step_fn.lower(self.state, self.batch, self.rng)


def build_abstract_run(config: RunConfig, mesh: jax.sharding.Mesh, hosts: int = 1) -> AbstractRun:
    """The step ``train.setup`` would build for ``config`` on ``mesh``, from abstract inputs.

    hosts: processes feeding the step (global batch = ``data.pairs_per_host`` × hosts).
    """
    model_config, model_source = policy_config(config)
    hps_config, hps_source = reward_config(config)
    data = train_lib._data_for_model(config, model_config)
    global_pairs = data.pairs_per_host * hosts
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if hosts > 1 and global_pairs % ways:
        raise ValueError(
            f"data.pairs_per_host × hosts = {global_pairs} pairs do not split over the "
            f"data × fsdp = {ways} batch shards of the mesh"
        )
    train_lib.check_rollout_rows(config, mesh, global_pairs)

    m = config.model
    dtype, param_dtype = m.dtype.dtype, m.param_dtype.dtype
    policy = nnx.eval_shape(
        lambda: Janus(
            model_config,
            dtype=dtype,
            param_dtype=param_dtype,
            scan_layers=m.scan_layers,
            remat=m.remat,
            rngs=nnx.Rngs(0),
        )
    )
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
    step_fn = train_lib.make_train_step(
        config, graphdef, optimizer, hps_graphdef, reward_state, ids
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


# -- reading the compiled program ----------------------------------------------------------------

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.*)$")
_ARRAY = re.compile(r"(pred|[suf]\d+|bf16|f8\w*|c64|c128|token)\[([\d,]*)\]")
_CALLED = re.compile(r"(?:calls|to_apply|body|true_computation|false_computation)=%?([\w.\-]+)")
_CALLED_LISTS = re.compile(r"(?:branch_computations|called_computations)=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_COLLECTIVES = (
    "all-gather",
    "all-reduce",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
    "ragged-all-to-all",
)
_BYTES = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16, "token": 0}


def _itemsize(dtype: str) -> float:
    if dtype in _BYTES:
        return _BYTES[dtype]
    if dtype.startswith("f8"):
        return 1
    return int(re.sub(r"\D", "", dtype)) / 8


def _arrays(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (dtype, tuple(int(d) for d in dims.split(",") if d))
        for dtype, dims in _ARRAY.findall(type_text)
    ]


def _split_type(rest: str) -> tuple[str, str]:
    """``TYPE opcode(...)...`` -> (TYPE, the rest); a tuple TYPE is parenthesised."""
    if not rest.startswith("("):
        type_text, _, tail = rest.partition(" ")
        return type_text, tail
    depth = 0
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return rest[: i + 1], rest[i + 2 :]
    raise ValueError(f"unbalanced HLO type in {rest[:200]!r}")


@dataclasses.dataclass
class ProgramCounts:
    """Per-device totals of one compiled program, loops multiplied by their trip counts.

    flops: matmul and convolution FLOPs, split into ``rollout`` (no gradient) and ``training``
    (ops under ``jvp``/``transpose``: the forward and backward of the loss). collective_bytes:
    bytes produced by collectives, same split. unknown_loops: while loops without a static trip
    count (the answer decode, which stops on EOS), each counted ``default_trip_count`` times.
    """

    flops: dict[str, float]
    collective_bytes: dict[str, float]
    unknown_loops: int


def count_program(hlo_text: str, default_trip_count: int) -> ProgramCounts:
    """Reads an optimised HLO module (``compiled.as_text()``)."""
    computations: dict[str, list[tuple[str, str, str]]] = {}
    entry = None
    current: list[tuple[str, str, str]] | None = None
    for line in hlo_text.splitlines():
        if current is None:
            match = _COMPUTATION.match(line)
            if match:
                current = computations.setdefault(match.group(1), [])
                if line.startswith("ENTRY"):
                    entry = match.group(1)
            continue
        if line.startswith("}"):
            current = None
            continue
        match = _INSTRUCTION.match(line)
        if match:
            type_text, tail = _split_type(match.group(2))
            current.append((match.group(1), type_text, tail))
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")

    unknown = 0
    memo: dict[str, np.ndarray] = {}

    def visit(name: str) -> np.ndarray:
        """[rollout flops, training flops, rollout bytes, training bytes] of one computation."""
        nonlocal unknown
        if name in memo:
            return memo[name]
        totals = np.zeros(4)
        shapes = {n: _arrays(t) for n, t, _ in computations[name]}
        for _, type_text, tail in computations[name]:
            opcode = tail.split("(", 1)[0]
            op_name = _OP_NAME.search(tail)
            grad = op_name is not None and (
                "jvp(" in op_name.group(1) or "transpose(" in op_name.group(1)
            )
            if opcode in ("dot", "convolution"):
                totals[int(grad)] += _matmul_flops(opcode, type_text, tail, shapes)
            elif opcode.removesuffix("-start") in _COLLECTIVES:
                sizes = [_itemsize(d) * math.prod(s) for d, s in _arrays(type_text)]
                totals[2 + int(grad)] += max(sizes, default=0)
            called = _CALLED.findall(tail)
            for group in _CALLED_LISTS.findall(tail):
                called += [c.strip().lstrip("%") for c in group.split(",") if c.strip()]
            if not called:
                continue
            times = 1
            if opcode == "while":
                trip = _TRIP_COUNT.search(tail)
                if trip is None:
                    unknown += 1
                times = int(trip.group(1)) if trip else default_trip_count
            sub = [visit(c) for c in called if c in computations]
            if opcode == "conditional":  # one branch runs: the costliest
                totals += times * max(sub, key=lambda v: v.sum(), default=np.zeros(4))
            else:
                totals += times * sum(sub, np.zeros(4))
        memo[name] = totals
        return totals

    r_flops, t_flops, r_bytes, t_bytes = visit(entry)
    return ProgramCounts(
        {"rollout": r_flops, "training": t_flops},
        {"rollout": r_bytes, "training": t_bytes},
        unknown,
    )


def _operands(tail: str) -> list[str]:
    inner = tail.split("(", 1)[1]
    depth, out, token = 1, [], ""
    for ch in inner:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            break
        if ch == "," and depth == 1:
            out.append(token)
            token = ""
        else:
            token += ch
    out.append(token)
    return [t.strip().split(" ")[-1].lstrip("%") for t in out if t.strip()]


def _matmul_flops(opcode: str, type_text: str, tail: str, shapes: dict) -> float:
    out = _arrays(type_text)[0][1]
    lhs, rhs = _operands(tail)[:2]
    if opcode == "dot":
        dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", tail)
        lhs_shape = shapes[lhs][0][1]
        contracted = [lhs_shape[int(d)] for d in dims.group(1).split(",") if d] if dims else []
        return 2.0 * math.prod(out) * math.prod(contracted)
    kernel = shapes[rhs][0][1]
    labels = re.search(r"dim_labels=\w+_(\w+)->", tail).group(1)
    return 2.0 * math.prod(out) * math.prod(kernel) / kernel[labels.index("o")]


# -- the plan ------------------------------------------------------------------------------------


def _device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ``ShapeDtypeStruct`` (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shard) * leaf.dtype.itemsize
    return total


def _ways(mesh: jax.sharding.Mesh, names: tuple[str, ...], size: int) -> int:
    """How many ways ``size`` rows split over mesh axes ``names`` (1 when they do not divide)."""
    ways = math.prod(mesh.shape[n] for n in names)
    return ways if size % ways == 0 else 1


def kv_cache_bytes(
    model: JanusConfig, rows: int, slots: int, dtype: Any, mesh: jax.sharding.Mesh
) -> int:
    """Per-device bytes of one rollout KV cache (``models.llama.KVCache``): keys and values
    [L, rows, slots, K, D] sharded over (batch, kv_heads), plus the valid mask."""
    t = model.text
    batch_ways = _ways(mesh, ("data", "fsdp"), rows)
    head_ways = _ways(mesh, ("tensor",), t.num_kv_heads)
    kv = 2 * t.num_layers * rows * slots * t.num_kv_heads * t.head_dim
    return kv * jnp.dtype(dtype).itemsize // (batch_ways * head_ways) + rows * slots // batch_ways


@dataclasses.dataclass
class Plan:
    """What ``pairuni plan`` prints (bytes per device, FLOPs per step, seconds)."""

    config: RunConfig
    target: str
    chip: Chip | None
    hbm_bytes: int | None
    num_devices: int
    platform: str  # of the devices compiled for
    mesh_shape: dict[str, int]
    global_pairs: int
    sources: dict[str, str]
    arguments: dict[str, int]  # bytes per device by group
    memory: Any  # compiled.memory_analysis()
    kv_cache: dict[str, int]  # analytic bytes per device: answers, images
    analytic: flops_lib.StepFlops  # global
    tokens: dict[str, int]
    compiled_counts: ProgramCounts  # per device
    cost_analysis_flops: float  # XLA's own count (loop bodies once)
    decode_bytes: dict[str, float]  # HBM bytes per device the decode loops read at least
    mfu: float
    seconds: dict[str, float]  # lower, compile

    @property
    def total_bytes(self) -> int:
        m = self.memory
        return (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
            + m.temp_size_in_bytes
            + m.generated_code_size_in_bytes
        )

    @property
    def fits(self) -> bool | None:
        return None if self.hbm_bytes is None else self.total_bytes <= self.hbm_bytes

    def consumers(self) -> list[tuple[str, int]]:
        """Every line of the memory table, largest first."""
        m = self.memory
        rows = dict(self.arguments)
        rows["outputs not aliased to the donated state"] = (
            m.output_size_in_bytes - m.alias_size_in_bytes
        )
        rows["temporaries (activations, KV caches, gradients)"] = m.temp_size_in_bytes
        return sorted(rows.items(), key=lambda kv: -kv[1])

    def step_seconds(self) -> dict[str, tuple[float, dict[str, float]]] | None:
        """Projected seconds of the rollout and training phases (None without a chip): each the
        largest of its lower bounds, compute (at ``mfu`` of peak; a decode loop no faster than
        reading the weights and KV cache from HBM every token) and collectives (the bytes the
        compiled program moves, at the chip's full ICI bandwidth)."""
        if self.chip is None:
            return None
        chip, a = self.chip, self.analytic
        rate = chip.peak_flops * self.mfu * self.num_devices
        decode = sum(
            max(flop / rate, self.decode_bytes[side] / chip.hbm_bandwidth)
            for side, flop in (("answers", a.answer_decode), ("images", a.image_decode))
        )
        collectives = self.compiled_counts.collective_bytes
        bounds = {
            "rollout": {
                "compute and HBM": (a.rollout - a.decode) / rate + decode,
                "collectives": collectives["rollout"] / chip.ici_bandwidth,
            },
            "training": {
                "compute": a.training / rate,
                "collectives": collectives["training"] / chip.ici_bandwidth,
            },
        }
        return {phase: (max(b.values()), b) for phase, b in bounds.items()}


def make_plan(
    config: RunConfig,
    devices: list[jax.Device],
    *,
    target: str,
    chip: Chip | None,
    hosts: int = 1,
    hbm_bytes: int | None = None,
    mfu: float = 0.4,
) -> Plan:
    """Builds, lowers and compiles the step of ``config`` on a mesh over ``devices``."""
    mesh = sharding.make_mesh(config.mesh, devices)
    run = build_abstract_run(config, mesh, hosts)
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        lowered = run.lower()
        lowered_at = time.perf_counter()
        compiled = lowered.compile()
        compiled_at = time.perf_counter()
    memory = compiled.memory_analysis()
    if memory is None:
        raise RuntimeError(f"the {devices[0].platform} compiler gives no memory analysis")

    model = run.model_config
    global_pairs = run.batch["und_input_ids"].shape[0]
    shapes = flops_lib.StepShapes.from_run_config(config, global_pairs)
    r = config.grpo.rollout
    dtype = config.model.dtype.dtype
    b_u = global_pairs * r.num_und_rollouts
    b_g = global_pairs * r.num_gen_rollouts
    image_tokens = model.num_generated_image_tokens
    kv = {
        "answers": kv_cache_bytes(
            model, b_u, config.data.max_und_len + r.max_new_tokens - 1, dtype, mesh
        ),
        "images": kv_cache_bytes(
            model, 2 * b_g, config.data.max_gen_len + image_tokens - 1, dtype, mesh
        ),
    }
    t = model.text
    param_bytes = jnp.dtype(config.model.param_dtype.dtype).itemsize
    tensor = mesh.shape["tensor"]
    layers = t.num_layers * flops_lib.llm_layer_params(t)
    text_head = t.hidden_size * t.vocab_size
    image_head = t.hidden_size * (t.hidden_size + model.vq.num_embeddings)
    decode_bytes = {
        "answers": (r.max_new_tokens - 1)
        * ((layers + text_head) * param_bytes / tensor + kv["answers"]),
        "images": (image_tokens - 1)
        * ((layers + image_head) * param_bytes / tensor + kv["images"]),
    }
    cost = compiled.cost_analysis()
    return Plan(
        config=config,
        target=target,
        chip=chip,
        hbm_bytes=hbm_bytes if hbm_bytes is not None else (chip.hbm_bytes if chip else None),
        num_devices=len(devices),
        platform=devices[0].platform,
        mesh_shape=dict(mesh.shape),
        global_pairs=global_pairs,
        sources=run.sources,
        arguments=run.argument_bytes(lowered),
        memory=memory,
        kv_cache=kv,
        analytic=flops_lib.step_flops(shapes, model, run.hps_config),
        tokens=flops_lib.step_tokens(shapes, model),
        compiled_counts=count_program(compiled.as_text(), max(r.max_new_tokens - 1, 1)),
        cost_analysis_flops=float(cost.get("flops", 0.0)) if cost else 0.0,
        decode_bytes=decode_bytes,
        mfu=mfu,
        seconds={"lower": lowered_at - start, "compile": compiled_at - lowered_at},
    )


# -- the report ----------------------------------------------------------------------------------


def _size(n: float) -> str:
    """Bytes in GiB, or MiB below 1 GiB, right-aligned in 11 columns."""
    return f"{n / GIB:7.2f} GiB" if n >= GIB else f"{n / 2**20:7.2f} MiB"


def _flop(n: float) -> str:
    """FLOPs in TFLOP, or GFLOP below 1 TFLOP, right-aligned in 13 columns."""
    return f"{n / 1e12:7.2f} TFLOP" if n >= 1e12 else f"{n / 1e9:7.2f} GFLOP"


def _hms(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m"


def format_plan(plan: Plan) -> str:
    """The plan as a text table."""
    c, m = plan.config, plan.memory
    r = c.grpo.rollout
    mesh = ", ".join(f"{k}={v}" for k, v in plan.mesh_shape.items())
    lines = [
        f"pairuni plan: {plan.target}, {plan.num_devices} devices, mesh {mesh}",
        f"  model: {plan.sources['model']}; reward: {plan.sources['reward']}",
        f"  dtype {c.model.dtype}, param_dtype {c.model.param_dtype}, remat {c.model.remat}; "
        f"{plan.global_pairs} pairs x ({r.num_und_rollouts} answers of <= {r.max_new_tokens} "
        f"tokens + {r.num_gen_rollouts} images); micro_batches {c.grpo.micro_batches}, "
        f"inner_iterations {c.grpo.inner_iterations}",
        "",
        "memory per device",
    ]
    rows = dict(plan.arguments)
    rows["outputs not aliased to the donated state"] = (
        m.output_size_in_bytes - m.alias_size_in_bytes
    )
    rows["temporaries (activations, KV caches, gradients)"] = m.temp_size_in_bytes
    lines += [f"  {name:<52}{_size(size)}" for name, size in rows.items()]
    lines += [
        f"    {'of which the ' + side + ' KV cache (analytic)':<50}{_size(size)}"
        for side, size in plan.kv_cache.items()
    ]
    lines.append(f"  {'generated code':<52}{_size(m.generated_code_size_in_bytes)}")
    total = f"  {'total':<52}{_size(plan.total_bytes)}"
    if plan.hbm_bytes is not None:
        chip = plan.chip.name if plan.chip else "the device"
        verdict = "fits" if plan.fits else "DOES NOT FIT"
        total += (
            f" of {_size(plan.hbm_bytes).strip()} on {chip} "
            f"({100 * plan.total_bytes / plan.hbm_bytes:.0f}%): {verdict}"
        )
    lines.append(total)
    lines.append(
        f"  memory_analysis() bytes: arguments {m.argument_size_in_bytes}, outputs "
        f"{m.output_size_in_bytes}, aliased {m.alias_size_in_bytes}, temporaries "
        f"{m.temp_size_in_bytes}, code {m.generated_code_size_in_bytes}"
    )

    a, n = plan.analytic, plan.num_devices
    counts = plan.compiled_counts
    flop_rows = {
        "rollout: answers (prefill + decode)": a.answer_prefill + a.answer_decode,
        "rollout: images (prefill + decode)": a.image_prefill + a.image_decode,
        "rewards: VQ decode + HPS": a.rewards,
        "KL reference forwards": a.reference,
        "training (forward + backward)": a.training,
        "model FLOPs": a.model,
        "recomputed in the backward (remat)": a.recompute,
    }
    lines += ["", f"{'FLOPs per step, analytic':<54}{'per device':>13}{'all devices':>15}"]
    lines += [
        f"  {name:<52}{_flop(value / n)}  {_flop(value)}"
        for name, value in flop_rows.items()
        if value or name != "KL reference forwards"
    ]
    lines += [
        "compiled program, per device (loops x trip counts)",
        f"  {'matmul FLOPs outside the gradient (rollout, rewards)':<52}"
        f"{_flop(counts.flops['rollout'])}",
        f"  {'matmul FLOPs of the gradient (forward + backward)':<52}"
        f"{_flop(counts.flops['training'])}",
        f"  {'collective bytes outside / inside the gradient':<52}"
        f"{_size(counts.collective_bytes['rollout'])} / "
        f"{_size(counts.collective_bytes['training']).strip()}",
        f"  (cost_analysis() counts each loop body once: {_flop(plan.cost_analysis_flops).strip()}"
        + (
            f"; {counts.unknown_loops} EOS-stopped loop counted at "
            f"{max(r.max_new_tokens - 1, 1)} steps)"
            if counts.unknown_loops
            else ")"
        ),
        f"  tokens per step: {plan.tokens['sampled']} sampled, {plan.tokens['trained']} "
        f"through the training forward per inner iteration",
    ]
    if plan.platform == "cpu" and c.model.dtype == "bf16":
        lines.append(
            "  (compiled by XLA:CPU, which runs bf16 matmuls in fp32: its collective bytes and "
            "temporaries can be up to twice a TPU's)"
        )
    seconds = plan.step_seconds()
    if seconds is not None:
        step = sum(total for total, _ in seconds.values())
        chip = plan.chip
        lines += [
            "",
            f"projected step on {chip.name}: {chip.peak_flops / 1e12:.0f} TFLOP/s bf16 at MFU "
            f"{plan.mfu:.2f}, {chip.hbm_bandwidth / 1e9:.0f} GB/s HBM, "
            f"{chip.ici_bandwidth / 1e9:.0f} GB/s ICI",
        ]
        for phase, (total, bounds) in seconds.items():
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in bounds.items())
            lines.append(f"  {phase:<52}{total:9.2f} s   (at least: {parts})")
        lines.append(
            f"  {'step':<52}{step:9.2f} s   {c.steps} steps: {_hms(step * c.steps)}; "
            f"{plan.tokens['sampled'] / step / n:.0f} sampled tokens/s per chip"
        )
    lines.append(
        f"\nlowered in {plan.seconds['lower']:.1f} s, compiled in {plan.seconds['compile']:.1f} s"
    )
    return "\n".join(lines)


def advice(plan: Plan) -> str:
    """Why the step does not fit, and the settings that would help, biggest consumer first."""
    c = plan.config
    knobs = {
        "trainable parameters": [
            "mesh.fsdp (shard parameters over more devices)",
            "model.param_dtype=bf16 (halves parameters and optimizer state)",
        ],
        "frozen parameters": ["mesh.fsdp (shard the frozen towers over more devices)"],
        "reference parameters": ["grpo.loss.kl_beta=0 (no reference copy)", "mesh.fsdp"],
        "optimizer state": [
            "mesh.fsdp (shard the optimizer state over more devices)",
            "model.param_dtype=bf16 (bf16 Adam moments)",
        ],
        "reward model (HPS, letter table)": [
            "mesh.fsdp (shards the reward model too)",
            "reward.dtype=bf16",
        ],
        "temporaries (activations, KV caches, gradients)": [
            f"grpo.micro_batches={2 * c.grpo.micro_batches} (smaller activation slices)",
            "grpo.rollout.num_und_rollouts / num_gen_rollouts or data.pairs_per_host (fewer "
            "rollouts per step: smaller KV caches and activations)",
            "mesh.data / mesh.fsdp (split the rollout rows over more devices)",
        ],
    }
    if c.model.remat != "full":
        knobs["temporaries (activations, KV caches, gradients)"].insert(
            0, "model.remat=full (recompute activations in the backward)"
        )
    if c.model.dtype != "bf16":
        knobs["temporaries (activations, KV caches, gradients)"].insert(
            0, "model.dtype=bf16 (bf16 KV cache and activations)"
        )
    top = plan.consumers()[:3]
    lines = [
        f"does not fit: {_size(plan.total_bytes).strip()} per device, "
        f"{_size(plan.hbm_bytes).strip()} available. Biggest consumers:"
    ]
    for name, size in top:
        lines.append(f"  {name}: {_size(size).strip()}")
        for knob in knobs.get(name, []):
            lines.append(f"    try {knob}")
    return "\n".join(lines)
