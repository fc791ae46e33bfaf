"""Janus-Pro parameter names: Hugging Face keys ↔ Flax parameter paths, and the layout transforms.

The Flax modules are named after transformers' ``JanusForConditionalGeneration``, so a
transformers key maps to a Flax path by rule, not by a per-tensor table:

- drop the leading ``model.``; numeric segments index ``nnx.List`` containers;
- ``language_model.layers.{i}`` and ``vision_model.encoder.layers.{j}`` are stacked on a leading
  ``layers`` axis: the index selects a slice of one stacked Flax array;
- the torch leaf ``weight`` becomes ``kernel`` (Linear: transposed [in, out]; Conv: OIHW → HWIO),
  ``scale`` (Layer/Group/RMS norms) or ``embedding`` (Embedding tables), whichever the Flax
  module has; ``bias`` stays ``bias``.

The DeepSeek original layout (``MultiModalityCausalLM``) is first renamed to transformers keys with
the regex table of spec/janus.md §3.3 (``DEEPSEEK_TO_HF``), splitting the fused SigLIP ``qkv`` and
squeezing ``pos_embed``; ``attn_pool.*``, ``codebook_used`` and ``rotary_emb.inv_freq`` are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

STACKED_PREFIXES: tuple[tuple[str, ...], ...] = (
    ("language_model", "layers"),
    ("vision_model", "encoder", "layers"),
)

WEIGHT_LEAVES = ("kernel", "scale", "embedding")


class MappingError(ValueError):
    """A key or shape that does not fit the model: the message names it."""


def _segments(key: str) -> list[str | int]:
    return [int(s) if s.isdigit() else s for s in key.split(".")]


def split_hf_key(key: str) -> tuple[tuple[str | int, ...], int | None, str]:
    """``model.language_model.layers.3.mlp.up_proj.weight`` →
    (``("language_model", "layers", "mlp", "up_proj")``, 3, ``"weight"``).

    Returns the Flax module path, the index into a stacked layer axis (or None) and the torch leaf.
    """
    segments = _segments(key)
    if segments[0] == "model":
        segments = segments[1:]
    elif segments[0] != "lm_head":
        raise MappingError(
            f"unexpected key {key!r}: transformers Janus keys start with 'model.' or 'lm_head.'"
        )
    *module, leaf = segments
    for prefix in STACKED_PREFIXES:
        n = len(prefix)
        if tuple(module[:n]) == prefix and len(module) > n and isinstance(module[n], int):
            return (*prefix, *module[n + 1 :]), module[n], leaf
    return tuple(module), None, leaf


def join_hf_key(module: tuple[str | int, ...], layer: int | None, leaf: str) -> str:
    """Inverse of ``split_hf_key``."""
    segments = list(module)
    if layer is not None:
        for prefix in STACKED_PREFIXES:
            if tuple(segments[: len(prefix)]) == prefix:
                segments.insert(len(prefix), layer)
                break
    prefix = [] if segments[0] == "lm_head" else ["model"]
    return ".".join(str(s) for s in [*prefix, *segments, leaf])


def _node(tree: Mapping, path: tuple, key: str) -> Mapping:
    node = tree
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            raise MappingError(
                f"unexpected key {key!r}: the model has no module {'.'.join(map(str, path))}"
            )
        node = node[p]
    return node


def flax_leaf(tree: Mapping, module: tuple, torch_leaf: str, key: str) -> str:
    """The Flax leaf name for a torch leaf under ``module`` of the (abstract) param tree."""
    node = _node(tree, module, key)
    if torch_leaf == "bias" and "bias" in node:
        return "bias"
    if torch_leaf == "weight":
        for name in WEIGHT_LEAVES:
            if name in node:
                return name
    raise MappingError(f"unexpected key {key!r}: module has parameters {sorted(node)}")


def to_flax_layout(x: np.ndarray, leaf: str) -> np.ndarray:
    """Torch layout → Flax layout for one tensor (or one layer slice of a stacked tensor)."""
    if leaf == "kernel" and x.ndim == 2:
        return x.T
    if leaf == "kernel" and x.ndim == 4:
        return x.transpose(2, 3, 1, 0)
    return x


def to_torch_layout(x: np.ndarray, leaf: str) -> np.ndarray:
    """Flax layout → torch layout (inverse of ``to_flax_layout``)."""
    if leaf == "kernel" and x.ndim == 2:
        return x.T
    if leaf == "kernel" and x.ndim == 4:
        return x.transpose(3, 2, 0, 1)
    return x


def hf_keys_of(tree: Mapping) -> list[tuple[str, tuple, int | None, str]]:
    """Every transformers key the Flax param tree stands for: (key, flax path, layer, leaf)."""
    out = []

    def walk(node: Any, path: tuple):
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, (*path, k))
            return
        *module, leaf = path
        module = tuple(module)
        torch_leaf = "bias" if leaf == "bias" else "weight"
        stacked = any(module[: len(p)] == p for p in STACKED_PREFIXES)
        layers = range(node.shape[0]) if stacked else [None]
        for layer in layers:
            out.append((join_hf_key(module, layer, torch_leaf), path, layer, leaf))

    walk(tree, ())
    return out


def load_hf_state_dict(tree: Mapping, tensors: Mapping[str, np.ndarray]) -> dict:
    """Builds the Flax pure param dict from transformers-named numpy tensors (in memory).

    ``tree`` is the model's abstract pure dict (shapes and dtypes). Unknown, missing and
    mis-shaped keys raise ``MappingError`` naming them. The streaming converter in
    ``checkpoint.convert`` uses the same rules one tensor at a time.
    """
    expected = {key: (path, layer, leaf) for key, path, layer, leaf in hf_keys_of(tree)}
    unexpected = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    if unexpected:
        raise MappingError(f"unexpected keys (not in the model): {unexpected[:10]}")
    if missing:
        raise MappingError(f"missing keys: {missing[:10]}")
    out: dict = {}
    for key, (path, layer, leaf) in expected.items():
        target = _node(tree, path[:-1], key)[leaf]
        value = to_flax_layout(np.asarray(tensors[key]), leaf)
        want = target.shape[1:] if layer is not None else target.shape
        if value.shape != tuple(want):
            raise MappingError(
                f"shape mismatch for {key!r}: expected {tuple(want)} (Flax layout), got {value.shape}"
            )
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        if layer is None:
            node[leaf] = value.astype(target.dtype)
        else:
            if leaf not in node:
                node[leaf] = np.zeros(target.shape, target.dtype)
            node[leaf][layer] = value
    return out


# -- DeepSeek original layout --------------------------------------------------------------------

DEEPSEEK_DROPPED = (
    re.compile(r"^vision_model\.vision_tower\.attn_pool\."),
    re.compile(r"^gen_vision_model\.quantize\.codebook_used$"),
    re.compile(r"rotary_emb\.inv_freq$"),
)

# Applied in order, each as a full-key regex substitution (spec/janus.md §3.3).
DEEPSEEK_TO_HF: tuple[tuple[str, str], ...] = (
    (
        r"^vision_model\.vision_tower\.blocks\.(\d+)\.attn\.proj\.",
        r"model.vision_model.encoder.layers.\1.self_attn.projection_layer.",
    ),
    (
        r"^vision_model\.vision_tower\.blocks\.(\d+)\.norm([12])\.",
        r"model.vision_model.encoder.layers.\1.layer_norm\2.",
    ),
    (
        r"^vision_model\.vision_tower\.blocks\.(\d+)\.mlp\.",
        r"model.vision_model.encoder.layers.\1.mlp.",
    ),
    (
        r"^vision_model\.vision_tower\.pos_embed$",
        r"model.vision_model.embeddings.position_embedding.weight",
    ),
    (
        r"^vision_model\.vision_tower\.patch_embed\.proj\.",
        r"model.vision_model.embeddings.patch_embedding.",
    ),
    (r"^vision_model\.vision_tower\.norm\.", r"model.vision_model.post_layernorm."),
    (r"^aligner\.layers\.0\.", r"model.aligner.fc1."),
    (r"^aligner\.layers\.2\.", r"model.aligner.hidden_layers.0."),
    (
        r"^gen_vision_model\.encoder\.conv_blocks\.(\d+)\.res\.",
        r"model.vqmodel.encoder.down.\1.block.",
    ),
    (
        r"^gen_vision_model\.encoder\.conv_blocks\.(\d+)\.(attn|downsample)\.",
        r"model.vqmodel.encoder.down.\1.\2.",
    ),
    (
        r"^gen_vision_model\.decoder\.conv_blocks\.(\d+)\.res\.",
        r"model.vqmodel.decoder.up.\1.block.",
    ),
    (
        r"^gen_vision_model\.decoder\.conv_blocks\.(\d+)\.(attn|upsample)\.",
        r"model.vqmodel.decoder.up.\1.\2.",
    ),
    (r"^gen_vision_model\.(encoder|decoder)\.mid\.0\.", r"model.vqmodel.\1.mid.block_1."),
    (r"^gen_vision_model\.(encoder|decoder)\.mid\.1\.", r"model.vqmodel.\1.mid.attn_1."),
    (r"^gen_vision_model\.(encoder|decoder)\.mid\.2\.", r"model.vqmodel.\1.mid.block_2."),
    (r"^gen_vision_model\.", r"model.vqmodel."),
    (r"^gen_aligner\.layers\.0\.", r"model.generation_aligner.fc1."),
    (r"^gen_aligner\.layers\.2\.", r"model.generation_aligner.hidden_layers.0."),
    (r"^gen_head\.output_mlp_projector\.", r"model.generation_head.proj_out."),
    (r"^gen_head\.vision_head\.", r"model.generation_head.vision_head."),
    (r"^gen_embed\.weight$", r"model.generation_embeddings.weight"),
    (r"^language_model\.model\.", r"model.language_model."),
    (r"^language_model\.lm_head\.", r"lm_head."),
)
_DEEPSEEK_TO_HF = tuple((re.compile(a), b) for a, b in DEEPSEEK_TO_HF)
_QKV = re.compile(r"^vision_model\.vision_tower\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")


def deepseek_dropped(key: str) -> bool:
    return any(p.search(key) for p in DEEPSEEK_DROPPED)


def deepseek_to_hf(key: str, value: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Renames one DeepSeek tensor to transformers key(s): the fused qkv becomes q, k, v."""
    m = _QKV.match(key)
    if m:
        if value.shape[0] % 3:
            raise MappingError(
                f"shape mismatch for {key!r}: first dim {value.shape[0]} is not 3 × width"
            )
        q, k, v = np.split(value, 3, axis=0)
        base = f"model.vision_model.encoder.layers.{m.group(1)}.self_attn"
        return [(f"{base}.{n}_proj.{m.group(2)}", t) for n, t in zip("qkv", (q, k, v))]
    new = key
    for pattern, repl in _DEEPSEEK_TO_HF:
        new = pattern.sub(repl, new)
    if new == key or not (new.startswith("model.") or new.startswith("lm_head.")):
        raise MappingError(f"unexpected key {key!r}: not a DeepSeek Janus key")
    if key == "vision_model.vision_tower.pos_embed":
        value = value.reshape(value.shape[-2:])
    return [(new, value)]


def shape_only(shape: tuple[int, ...]) -> np.ndarray:
    """A zero-byte stand-in array of ``shape`` (every stride 0).

    Running the layout and rename functions on it gives the resulting shapes from file headers
    alone, before any tensor is read.
    """
    return np.broadcast_to(np.zeros((), np.uint8), shape)


# Inverse of DEEPSEEK_TO_HF; each rule is anchored on its own transformers prefix.
HF_TO_DEEPSEEK: tuple[tuple[str, str], ...] = (
    (
        r"^model\.vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection_layer\.",
        r"vision_model.vision_tower.blocks.\1.attn.proj.",
    ),
    (
        r"^model\.vision_model\.encoder\.layers\.(\d+)\.layer_norm([12])\.",
        r"vision_model.vision_tower.blocks.\1.norm\2.",
    ),
    (
        r"^model\.vision_model\.encoder\.layers\.(\d+)\.mlp\.",
        r"vision_model.vision_tower.blocks.\1.mlp.",
    ),
    (
        r"^model\.vision_model\.embeddings\.position_embedding\.weight$",
        r"vision_model.vision_tower.pos_embed",
    ),
    (
        r"^model\.vision_model\.embeddings\.patch_embedding\.",
        r"vision_model.vision_tower.patch_embed.proj.",
    ),
    (r"^model\.vision_model\.post_layernorm\.", r"vision_model.vision_tower.norm."),
    (r"^model\.aligner\.fc1\.", r"aligner.layers.0."),
    (r"^model\.aligner\.hidden_layers\.0\.", r"aligner.layers.2."),
    (r"^model\.vqmodel\.(encoder|decoder)\.mid\.block_1\.", r"gen_vision_model.\1.mid.0."),
    (r"^model\.vqmodel\.(encoder|decoder)\.mid\.attn_1\.", r"gen_vision_model.\1.mid.1."),
    (r"^model\.vqmodel\.(encoder|decoder)\.mid\.block_2\.", r"gen_vision_model.\1.mid.2."),
    (
        r"^model\.vqmodel\.encoder\.down\.(\d+)\.block\.",
        r"gen_vision_model.encoder.conv_blocks.\1.res.",
    ),
    (
        r"^model\.vqmodel\.encoder\.down\.(\d+)\.(attn|downsample)\.",
        r"gen_vision_model.encoder.conv_blocks.\1.\2.",
    ),
    (
        r"^model\.vqmodel\.decoder\.up\.(\d+)\.block\.",
        r"gen_vision_model.decoder.conv_blocks.\1.res.",
    ),
    (
        r"^model\.vqmodel\.decoder\.up\.(\d+)\.(attn|upsample)\.",
        r"gen_vision_model.decoder.conv_blocks.\1.\2.",
    ),
    (r"^model\.vqmodel\.", r"gen_vision_model."),
    (r"^model\.generation_aligner\.fc1\.", r"gen_aligner.layers.0."),
    (r"^model\.generation_aligner\.hidden_layers\.0\.", r"gen_aligner.layers.2."),
    (r"^model\.generation_head\.proj_out\.", r"gen_head.output_mlp_projector."),
    (r"^model\.generation_head\.vision_head\.", r"gen_head.vision_head."),
    (r"^model\.generation_embeddings\.weight$", r"gen_embed.weight"),
    (r"^model\.language_model\.", r"language_model.model."),
    (r"^lm_head\.", r"language_model.lm_head."),
)
_HF_TO_DEEPSEEK = tuple((re.compile(a), b) for a, b in HF_TO_DEEPSEEK)
_HF_QKV = re.compile(
    r"^model\.vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$"
)
_DEEPSEEK_POS_EMBED = "vision_model.vision_tower.pos_embed"


def hf_to_deepseek_key(key: str) -> str:
    """The DeepSeek key holding transformers tensor ``key``.

    The SigLIP ``q_proj``, ``k_proj`` and ``v_proj`` of a block all map to its fused ``attn.qkv``.
    """
    m = _HF_QKV.match(key)
    if m:
        return f"vision_model.vision_tower.blocks.{m.group(1)}.attn.qkv.{m.group(3)}"
    new = key
    for pattern, repl in _HF_TO_DEEPSEEK:
        new = pattern.sub(repl, new)
    if new == key:
        raise MappingError(f"unexpected key {key!r}: no DeepSeek Janus name for it")
    return new


def _qkv_rank(key: str) -> int:
    m = _HF_QKV.match(key)
    return "qkv".index(m.group(2)) if m else 0


def deepseek_groups(hf_keys: list[str]) -> dict[str, list[str]]:
    """Transformers keys grouped by the DeepSeek tensor they form.

    Each group is one key, except a fused SigLIP ``qkv``: its q, k and v parts, in that order.
    """
    groups: dict[str, list[str]] = {}
    for key in hf_keys:
        groups.setdefault(hf_to_deepseek_key(key), []).append(key)
    for name, parts in groups.items():
        parts.sort(key=_qkv_rank)
        fused = _HF_QKV.match(parts[0]) is not None
        if [_qkv_rank(k) for k in parts] != ([0, 1, 2] if fused else [0]):
            want = "q, k and v parts" if fused else "one part"
            raise MappingError(f"{name!r}: expected {want}, got {parts}")
    return groups


def join_deepseek(key: str, parts: list[np.ndarray]) -> np.ndarray:
    """Inverse of ``deepseek_to_hf`` for one tensor: fuses q, k, v and unsqueezes pos_embed."""
    if len(parts) == 3:
        return np.concatenate(parts, axis=0)
    if key == _DEEPSEEK_POS_EMBED:
        return parts[0][None]
    return parts[0]


def copy_into(dst: np.ndarray, src: np.ndarray, block: int = 64) -> None:
    """``dst[...] = src`` (casting to ``dst.dtype``), fast when ``src`` is a transposed 2-D view.

    numpy copies a transposed view with large strides at ~150 MB/s; copying column blocks that
    fit in cache, one at a time, runs at ~1 GB/s. Used for every Linear kernel both ways.
    """
    if src.ndim == 2 and src.T.flags.c_contiguous and not src.flags.c_contiguous:
        rows = src.T
        for j in range(0, src.shape[0], block):
            dst[j : j + block] = np.ascontiguousarray(rows[:, j : j + block]).T
    else:
        dst[...] = src
