"""HPSv2 / open_clip ViT checkpoint -> Orbax reward directory (spec/hpsv2.md §1.2, §2.3, §2.4).

The source is a torch pickle: ``HPS_v2.1_compressed.pt`` / ``HPS_v2_compressed.pt`` (fp16 tensors
under ``state_dict``) or any open_clip ViT state dict. Every key is mapped through the table below,
shape-checked against the Flax model built from the given ``CLIPConfig``, cast to fp32 and written
with ``checkpoint.model_dir``. The directory also gets the CLIP tokenizer in Hugging Face format
(``tokenizer.json``), built from the BPE vocabulary inside open-clip-torch, so that run time needs
neither torch nor open_clip: ``transformers.CLIPTokenizerFast.from_pretrained(reward_dir)``.

torch -> Flax (``*`` = ``visual.`` for the image tower, nothing for the text tower; block
params are stacked on a leading layer axis, ``[i]``):

- ``visual.conv1.weight`` [O, I, h, w] -> ``visual/conv1/kernel`` [h, w, I, O]
- ``*transformer.resblocks.i.attn.in_proj_weight`` [3W, W] -> ``.../blocks/attn/qkv/kernel[i]``
  = ``.T`` reshaped to [W, 3, H, K]; ``in_proj_bias`` -> ``qkv/bias[i]`` [3, H, K]
- ``*...attn.out_proj.weight`` [W, W] -> ``attn/out/kernel[i]`` = ``.T`` reshaped to [H, K, W]
- ``*...mlp.c_fc|c_proj.weight`` -> ``c_fc|c_proj/kernel[i]`` = ``.T``; biases as is
- LayerNorm ``weight`` / ``bias`` -> ``scale`` / ``bias``; embeddings, ``proj`` and
  ``text_projection`` as is (they are used as ``x @ w`` already)
- ``logit_scale`` is dropped: the HPS score uses no temperature.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import math
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from pairuni_jax import destinations
from pairuni_jax.checkpoint import model_dir
from pairuni_jax.models.clip import CLIP, CLIPConfig, TextConfig, VisionConfig

REWARD_KIND = "hpsv2"
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
# The first 49152 - 256 - 2 merges of the BPE file are the CLIP vocabulary (open_clip, OpenAI).
NUM_MERGES = 49152 - 256 - 2


@dataclasses.dataclass(frozen=True)
class Transform:
    """A torch tensor -> Flax leaf rule: the torch shape it expects and the array mapping."""

    source_shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    apply: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


SAME = Transform(lambda t: t, lambda a, t: a)
TRANSPOSE = Transform(lambda t: t[::-1], lambda a, t: a.T)
CONV = Transform(lambda t: (t[3], t[2], t[0], t[1]), lambda a, t: a.transpose(2, 3, 1, 0))
QKV_KERNEL = Transform(lambda t: (t[1] * t[2] * t[3], t[0]), lambda a, t: a.T.reshape(t))
QKV_BIAS = Transform(lambda t: (t[0] * t[1] * t[2],), lambda a, t: a.reshape(t))
OUT_KERNEL = Transform(lambda t: (t[2], t[0] * t[1]), lambda a, t: a.T.reshape(t))

TOP_LEVEL: dict[str, tuple[tuple[str, ...], Transform]] = {
    "visual.conv1.weight": (("visual", "conv1", "kernel"), CONV),
    "visual.class_embedding": (("visual", "class_embedding"), SAME),
    "visual.positional_embedding": (("visual", "positional_embedding"), SAME),
    "visual.ln_pre.weight": (("visual", "ln_pre", "scale"), SAME),
    "visual.ln_pre.bias": (("visual", "ln_pre", "bias"), SAME),
    "visual.ln_post.weight": (("visual", "ln_post", "scale"), SAME),
    "visual.ln_post.bias": (("visual", "ln_post", "bias"), SAME),
    "visual.proj": (("visual", "proj"), SAME),
    "token_embedding.weight": (("text", "token_embedding", "embedding"), SAME),
    "positional_embedding": (("text", "positional_embedding"), SAME),
    "ln_final.weight": (("text", "ln_final", "scale"), SAME),
    "ln_final.bias": (("text", "ln_final", "bias"), SAME),
    "text_projection": (("text", "text_projection"), SAME),
}
BLOCK: dict[str, tuple[tuple[str, ...], Transform]] = {
    "ln_1.weight": (("ln_1", "scale"), SAME),
    "ln_1.bias": (("ln_1", "bias"), SAME),
    "attn.in_proj_weight": (("attn", "qkv", "kernel"), QKV_KERNEL),
    "attn.in_proj_bias": (("attn", "qkv", "bias"), QKV_BIAS),
    "attn.out_proj.weight": (("attn", "out", "kernel"), OUT_KERNEL),
    "attn.out_proj.bias": (("attn", "out", "bias"), SAME),
    "ln_2.weight": (("ln_2", "scale"), SAME),
    "ln_2.bias": (("ln_2", "bias"), SAME),
    "mlp.c_fc.weight": (("c_fc", "kernel"), TRANSPOSE),
    "mlp.c_fc.bias": (("c_fc", "bias"), SAME),
    "mlp.c_proj.weight": (("c_proj", "kernel"), TRANSPOSE),
    "mlp.c_proj.bias": (("c_proj", "bias"), SAME),
}
TOWER_PREFIX = {"visual": "visual.", "text": ""}
IGNORED = frozenset({"logit_scale"})
# Attention heads are not visible in the tensors. ViT-H-14's head widths (open_clip: vision
# head_width 80; text 1024 wide with 16 heads) give them for its family at any width.
HEAD_WIDTHS = {"vision": 80, "text": 64}
BLOCK_KEY = re.compile(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)")


class CheckpointMismatchError(ValueError):
    """The state dict does not fit the configured CLIP: names every bad key and shape."""


def convert_hpsv2(
    src: str | Path,
    dst: str | Path,
    config: CLIPConfig | None = None,
    bpe_path: str | Path | None = None,
    overwrite: bool = False,
    *,
    heads: tuple[int | None, int | None] = (None, None),
) -> tuple[Path, CLIPConfig]:
    """Converts ``src`` (.pt) into the Orbax reward directory ``dst``; returns it and the config.

    config: the architecture the checkpoint must have (a preset); None: the sizes come from the
      tensors (``config_from_state_dict``). Either way every tensor is checked.
    heads: (vision, text) attention heads when ``config`` is None (None: ViT-H-14's head widths).
    bpe_path: ``bpe_simple_vocab_16e6.txt.gz`` (default: the copy shipped in open-clip-torch).
    """
    destinations.check(dst, sources=[src], overwrite=overwrite)
    state = load_torch_state_dict(src)
    derived = config_from_state_dict(
        state, *((config.vision.heads, config.text.heads) if config else heads)
    )
    if config is not None and derived != config:
        raise CheckpointMismatchError(f"{src}: {_differences(derived, config)}")
    config = derived
    params = convert_state_dict(state, config)
    meta = {"kind": REWARD_KIND, "clip": config.to_dict(), "source": Path(src).name}
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        files = save_clip_tokenizer(tokenizer_dir, config.text.context_length, bpe_path)
        saved = model_dir.save_model_dir(
            dst, params, meta, files, overwrite=overwrite, command="convert hpsv2"
        )
        return saved, config


def config_from_state_dict(
    state: Mapping[str, Any], vision_heads: int | None = None, text_heads: int | None = None
) -> CLIPConfig:
    """The CLIPConfig an open_clip ViT state dict has: every size from the tensors' shapes, the
    heads from the arguments (None: width / ViT-H-14's head width for that tower)."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointMismatchError(f"missing key {key!r}: not an open_clip ViT state dict")
        return tuple(state[key].shape)

    def layers(prefix: str) -> int:
        blocks = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
        return max(blocks) + 1 if blocks else 0

    def tower_heads(tower: str, width: int, given: int | None) -> int:
        head_width = HEAD_WIDTHS[tower]
        if given is None and width % head_width:
            flag = f"--{tower}-heads"
            raise CheckpointMismatchError(
                f"{tower} width {width} is not a multiple of ViT-H-14's head width {head_width}: "
                f"the heads are not stored in the checkpoint; give them ({flag}) or a preset"
            )
        return given or width // head_width

    width, _, patch, _ = shape("visual.conv1.weight")
    grid = math.isqrt(shape("visual.positional_embedding")[0] - 1)
    vocab, text_width = shape("token_embedding.weight")
    try:
        return CLIPConfig(
            embed_dim=shape("text_projection")[1],
            vision=VisionConfig(
                image_size=grid * patch,
                patch_size=patch,
                width=width,
                layers=layers("visual.transformer.resblocks."),
                heads=tower_heads("vision", width, vision_heads),
                mlp_dim=shape("visual.transformer.resblocks.0.mlp.c_fc.weight")[0],
            ),
            text=TextConfig(
                context_length=shape("positional_embedding")[0],
                vocab_size=vocab,
                width=text_width,
                layers=layers("transformer.resblocks."),
                heads=tower_heads("text", text_width, text_heads),
                mlp_dim=shape("transformer.resblocks.0.mlp.c_fc.weight")[0],
            ),
        )
    except ValueError as e:
        raise CheckpointMismatchError(f"the tensors' sizes are not a CLIP ViT: {e}") from e


def _differences(got: CLIPConfig, want: CLIPConfig) -> str:
    """``vision.width 40 (expected 1280), ...`` for every size that differs."""
    flat = lambda c: {  # noqa: E731
        f"{tower}.{k}" if tower else k: v
        for tower, d in (("", {"embed_dim": c.embed_dim}), ("vision", c.vision), ("text", c.text))
        for k, v in (d.items() if isinstance(d, dict) else dataclasses.asdict(d).items())
    }
    g, w = flat(got), flat(want)
    diffs = [f"{k} {g[k]} (expected {w[k]})" for k in w if g[k] != w[k]]
    return "the state dict's sizes differ from the named architecture: " + ", ".join(diffs)


def load_torch_state_dict(path: str | Path) -> Mapping[str, Any]:
    """The tensors of a torch checkpoint: ``ckpt['state_dict']`` if present, else ``ckpt``.

    Loaded with ``weights_only=True``, memory-mapped when the file is in the zip format, so a
    tensor is read only when it is converted. A ``module.`` prefix (DDP) is stripped.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as e:
        raise CheckpointMismatchError(
            f"{path}: not a torch checkpoint that loads with weights_only=True ({e})"
        ) from e
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointMismatchError(
            f"{path}: expected a state dict of tensors, or a dict with one under 'state_dict'"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def convert_state_dict(state: Mapping[str, Any], config: CLIPConfig) -> dict[str, Any]:
    """Maps an open_clip state dict (torch tensors or arrays) to the CLIP params pure dict (fp32).

    Raises ``CheckpointMismatchError`` naming missing, unexpected and mis-shaped keys before any
    tensor is read.
    """
    targets = _target_shapes(config)
    _check(state, config, targets)
    params: dict[str, Any] = {}
    for key, tensor in state.items():
        if key in IGNORED:
            continue
        path, layer, transform = _route(key)
        shape = _leaf(targets, path)
        array = transform.apply(_to_numpy(tensor), shape[1:] if layer is not None else shape)
        if layer is None:
            _set_leaf(params, path, np.ascontiguousarray(array))
        else:
            _stacked_leaf(params, path, shape)[layer] = array
    return params


def _target_shapes(config: CLIPConfig) -> dict[str, Any]:
    abstract = nnx.eval_shape(lambda: CLIP(config, rngs=nnx.Rngs(0)))
    pure = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    return _map_leaves(pure, lambda x: tuple(x.shape))


def expected_keys(config: CLIPConfig) -> set[str]:
    """Every torch key the config implies (the 686 of ViT-H-14 minus the ignored ones)."""
    keys = set(TOP_LEVEL)
    for tower, layers in (("visual", config.vision.layers), ("text", config.text.layers)):
        prefix = TOWER_PREFIX[tower]
        keys |= {f"{prefix}transformer.resblocks.{i}.{k}" for i in range(layers) for k in BLOCK}
    return keys


def _route(key: str) -> tuple[tuple[str, ...], int | None, Transform]:
    """Flax path, stacked-layer index (None for unstacked leaves) and transform of a torch key."""
    if key in TOP_LEVEL:
        path, transform = TOP_LEVEL[key]
        return path, None, transform
    match = BLOCK_KEY.fullmatch(key)
    if match is None or match.group(3) not in BLOCK:
        raise KeyError(key)
    tower = "visual" if match.group(1) else "text"
    sub, transform = BLOCK[match.group(3)]
    return (tower, "transformer", "blocks", *sub), int(match.group(2)), transform


def _check(state: Mapping[str, Any], config: CLIPConfig, targets: dict[str, Any]) -> None:
    expected = expected_keys(config)
    present = set(state) - IGNORED
    problems = []
    if missing := sorted(expected - present):
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected := sorted(present - expected):
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    for key in sorted(present & expected):
        path, layer, transform = _route(key)
        shape = _leaf(targets, path)
        want = transform.source_shape(shape[1:] if layer is not None else shape)
        got = tuple(state[key].shape)
        if got != want:
            problems.append(f"{key}: shape {list(got)}, expected {list(want)}")
        if not np.issubdtype(_dtype(state[key]), np.floating):
            problems.append(f"{key}: dtype {state[key].dtype}, expected floating point")
    if problems:
        raise CheckpointMismatchError(
            f"state dict does not match CLIP config {config}:\n  " + "\n  ".join(problems)
        )


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _to_numpy(tensor: Any) -> np.ndarray:
    if hasattr(tensor, "detach"):  # torch
        return tensor.detach().float().numpy()
    return np.asarray(tensor, dtype=np.float32)


def _dtype(tensor: Any) -> np.dtype:
    if hasattr(tensor, "is_floating_point"):  # torch (bf16 has no NumPy dtype)
        return np.dtype(np.float32 if tensor.is_floating_point() else np.int64)
    return np.asarray(tensor).dtype


def _leaf(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _set_leaf(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _stacked_leaf(tree: dict[str, Any], path: tuple[str, ...], shape: tuple[int, ...]) -> Any:
    parent = tree
    for name in path[:-1]:
        parent = parent.setdefault(name, {})
    if path[-1] not in parent:
        parent[path[-1]] = np.empty(shape, np.float32)
    return parent[path[-1]]


def _map_leaves(tree: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(tree, Mapping):
        return {k: _map_leaves(v, fn) for k, v in tree.items()}
    return fn(tree)


# --- CLIP tokenizer files ------------------------------------------------------------------------


def default_bpe_path() -> Path:
    """The BPE vocabulary shipped inside the open-clip-torch wheel (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{BPE_FILE}: open-clip-torch is not installed; install it or pass the file's path"
        )
    return Path(spec.submodule_search_locations[0]) / BPE_FILE


def bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet in vocabulary order: printable bytes as themselves, then the
    other bytes, in increasing order, as U+0100, U+0101, ..."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return table


def clip_bpe_vocab(
    bpe_path: str | Path | None = None, words: Sequence[str] | None = None
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The 49408-token CLIP vocabulary and its merges, in open_clip's id order.

    words: keep only the merges BPE applies to these (lower-case) words, in their original
      order, for a text tower small enough to train from scratch (the demo reward). Those words
      tokenize to the same pieces as with the full vocabulary; other text falls back to shorter
      pieces, down to single bytes. The vocabulary is the 512 byte symbols, the kept merges,
      then SOT and EOT (EOT stays the largest id, as end-token pooling needs).
    """
    path = Path(bpe_path) if bpe_path is not None else default_bpe_path()
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: expected {NUM_MERGES} merges of two symbols after the header")
    if words is not None:
        used = set()
        ranks = {merge: rank for rank, merge in enumerate(merges)}
        for word in words:
            used.update(_merges_applied(word, ranks))
        merges = [m for m in merges if m in used]
    alphabet = list(bytes_to_unicode().values())
    tokens = [*alphabet, *(a + "</w>" for a in alphabet), *("".join(m) for m in merges), SOT, EOT]
    return {token: i for i, token in enumerate(tokens)}, merges


def _merges_applied(word: str, ranks: Mapping[tuple[str, str], int]) -> list[tuple[str, str]]:
    """The merges byte-level BPE applies, lowest rank first, to turn ``word`` into its pieces."""
    table = bytes_to_unicode()
    symbols = [table[b] for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    applied = []
    while len(symbols) > 1:
        pairs = [(symbols[i], symbols[i + 1]) for i in range(len(symbols) - 1)]
        best = min(pairs, key=lambda pair: ranks.get(pair, len(ranks)))
        if best not in ranks:
            break
        applied.append(best)
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return applied


def save_clip_tokenizer(
    directory: str | Path,
    context_length: int = 77,
    bpe_path: str | Path | None = None,
    words: Sequence[str] | None = None,
) -> list[Path]:
    """Writes the CLIP tokenizer in Hugging Face format into ``directory``; returns its files.

    words: restrict the vocabulary to these words' merges (``clip_bpe_vocab``)."""
    from transformers import CLIPTokenizerFast

    vocab, merges = clip_bpe_vocab(bpe_path, words)
    tokenizer = CLIPTokenizerFast(vocab=vocab, merges=merges, model_max_length=context_length)
    return [Path(f) for f in tokenizer.save_pretrained(str(directory)) if Path(f).is_file()]
