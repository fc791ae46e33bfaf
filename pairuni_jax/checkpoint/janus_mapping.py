"""Janus-Pro parameter names: Flax parameter paths → Hugging Face keys, and the layout transforms.

The Flax modules are named after transformers' ``JanusForConditionalGeneration``, so each Flax
parameter stands for transformers keys by rule (``hf_keys_of``), not by a per-tensor table:

- the key is ``model.`` + the module path (``lm_head`` has no prefix); numeric segments index
  ``nnx.List`` containers;
- ``language_model.layers`` and ``vision_model.encoder.layers`` are stacked on a leading
  ``layers`` axis: one Flax array stands for the keys ``...layers.{i}.*`` of every layer i;
- the Flax leaf ``kernel`` (Linear: transposed [in, out]; Conv: OIHW → HWIO), ``scale`` (norms)
  and ``embedding`` (tables) are the torch ``weight``; ``bias`` stays ``bias``.

Both converters start from the model's param tree and ask which key each leaf needs, so an
unknown, missing or mis-shaped key is named before any tensor is read.

The DeepSeek original layout (``MultiModalityCausalLM``) differs from transformers' by key
prefixes only (``DEEPSEEK_HF_PREFIXES``, one table read in both directions), plus the fused SigLIP
``qkv`` (split into q, k, v) and the unsqueezed ``pos_embed``; ``attn_pool.*``, ``codebook_used``
and ``rotary_emb.inv_freq`` are dropped.
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


class MappingError(ValueError):
    """A key or shape that does not fit the model: the message names it."""


def join_hf_key(module: tuple[str | int, ...], layer: int | None, leaf: str) -> str:
    """The transformers key of torch ``leaf`` (``weight`` / ``bias``) of a Flax module path;
    ``layer`` indexes the stacked layer axis (None for unstacked modules).

    ``(("language_model", "layers", "mlp", "up_proj"), 3, "weight")`` →
    ``model.language_model.layers.3.mlp.up_proj.weight``.
    """
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


def _relayout(x: np.ndarray, leaf: str, conv_axes: tuple[int, ...]) -> np.ndarray:
    """Linear kernels transposed, conv kernels permuted by ``conv_axes``, the rest as is."""
    if leaf != "kernel" or x.ndim not in (2, 4):
        return x
    return x.T if x.ndim == 2 else x.transpose(conv_axes)


def to_flax_layout(x: np.ndarray, leaf: str) -> np.ndarray:
    """Torch layout → Flax layout for one tensor (or one layer slice of a stacked tensor):
    Linear [out, in] → [in, out], Conv OIHW → HWIO."""
    return _relayout(x, leaf, (2, 3, 1, 0))


def to_torch_layout(x: np.ndarray, leaf: str) -> np.ndarray:
    """Flax layout → torch layout (inverse of ``to_flax_layout``)."""
    return _relayout(x, leaf, (3, 2, 0, 1))


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

# DeepSeek key prefix ↔ transformers key prefix (spec/janus.md §3.3), used in both directions: a
# key takes the first rule whose side matches its start. ``{n}`` stands for a block or level
# number; a side that does not end in "." is a whole key. More specific rules come first.
DEEPSEEK_HF_PREFIXES: tuple[tuple[str, str], ...] = (
    (
        "vision_model.vision_tower.blocks.{n}.attn.proj.",
        "model.vision_model.encoder.layers.{n}.self_attn.projection_layer.",
    ),
    (
        "vision_model.vision_tower.blocks.{n}.norm1.",
        "model.vision_model.encoder.layers.{n}.layer_norm1.",
    ),
    (
        "vision_model.vision_tower.blocks.{n}.norm2.",
        "model.vision_model.encoder.layers.{n}.layer_norm2.",
    ),
    ("vision_model.vision_tower.blocks.{n}.mlp.", "model.vision_model.encoder.layers.{n}.mlp."),
    (
        "vision_model.vision_tower.pos_embed",
        "model.vision_model.embeddings.position_embedding.weight",
    ),
    (
        "vision_model.vision_tower.patch_embed.proj.",
        "model.vision_model.embeddings.patch_embedding.",
    ),
    ("vision_model.vision_tower.norm.", "model.vision_model.post_layernorm."),
    ("aligner.layers.0.", "model.aligner.fc1."),
    ("aligner.layers.2.", "model.aligner.hidden_layers.0."),
    *(
        (f"gen_vision_model.{part}.mid.{i}.", f"model.vqmodel.{part}.mid.{name}.")
        for part in ("encoder", "decoder")
        for i, name in enumerate(("block_1", "attn_1", "block_2"))
    ),
    *(
        (
            f"gen_vision_model.{part}.conv_blocks.{{n}}.{ds}.",
            f"model.vqmodel.{part}.{hf}.{{n}}.{t}.",
        )
        for part, hf, resample in (("encoder", "down", "downsample"), ("decoder", "up", "upsample"))
        for ds, t in (("res", "block"), ("attn", "attn"), (resample, resample))
    ),
    ("gen_vision_model.", "model.vqmodel."),
    ("gen_aligner.layers.0.", "model.generation_aligner.fc1."),
    ("gen_aligner.layers.2.", "model.generation_aligner.hidden_layers.0."),
    ("gen_head.output_mlp_projector.", "model.generation_head.proj_out."),
    ("gen_head.vision_head.", "model.generation_head.vision_head."),
    ("gen_embed.weight", "model.generation_embeddings.weight"),
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
)


def _side_pattern(side: str) -> re.Pattern:
    """A rule side as a regex anchored at the key's start (and end, for a whole key)."""
    pattern = re.escape(side).replace(r"\{n\}", r"(?P<n>\d+)")
    return re.compile("^" + pattern + ("" if side.endswith(".") else "$"))


_RULES = tuple(
    (_side_pattern(deepseek), deepseek, _side_pattern(hf), hf)
    for deepseek, hf in DEEPSEEK_HF_PREFIXES
)


def _rename(key: str, to_hf: bool) -> str | None:
    """``key`` with its prefix rewritten by the first matching rule, or None if none matches."""
    for deepseek_pattern, deepseek, hf_pattern, hf in _RULES:
        pattern, target = (deepseek_pattern, hf) if to_hf else (hf_pattern, deepseek)
        m = pattern.match(key)
        if m:
            return target.format(**m.groupdict()) + key[m.end() :]
    return None


_DEEPSEEK_QKV = re.compile(r"^vision_model\.vision_tower\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_HF_QKV = re.compile(
    r"^model\.vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$"
)
_DEEPSEEK_POS_EMBED = "vision_model.vision_tower.pos_embed"


def deepseek_dropped(key: str) -> bool:
    return any(p.search(key) for p in DEEPSEEK_DROPPED)


def deepseek_to_hf(key: str, value: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Renames one DeepSeek tensor to transformers key(s): the fused qkv becomes q, k, v."""
    m = _DEEPSEEK_QKV.match(key)
    if m:
        if value.shape[0] % 3:
            raise MappingError(
                f"shape mismatch for {key!r}: first dim {value.shape[0]} is not 3 × width"
            )
        q, k, v = np.split(value, 3, axis=0)
        base = f"model.vision_model.encoder.layers.{m.group(1)}.self_attn"
        return [(f"{base}.{n}_proj.{m.group(2)}", t) for n, t in zip("qkv", (q, k, v))]
    new = _rename(key, to_hf=True)
    if new is None:
        raise MappingError(f"unexpected key {key!r}: not a DeepSeek Janus key")
    if key == _DEEPSEEK_POS_EMBED:
        value = value.reshape(value.shape[-2:])
    return [(new, value)]


def shape_only(shape: tuple[int, ...]) -> np.ndarray:
    """A zero-byte stand-in array of ``shape`` (every stride 0).

    Running the layout and rename functions on it gives the resulting shapes from file headers
    alone, before any tensor is read.
    """
    return np.broadcast_to(np.zeros((), np.uint8), shape)


def hf_to_deepseek_key(key: str) -> str:
    """The DeepSeek key holding transformers tensor ``key``.

    The SigLIP ``q_proj``, ``k_proj`` and ``v_proj`` of a block all map to its fused ``attn.qkv``.
    """
    m = _HF_QKV.match(key)
    if m:
        return f"vision_model.vision_tower.blocks.{m.group(1)}.attn.qkv.{m.group(3)}"
    new = _rename(key, to_hf=False)
    if new is None:
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
