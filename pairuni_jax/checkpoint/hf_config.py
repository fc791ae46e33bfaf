"""Janus configs across checkpoint formats.

Reading: the model's sizes come from the checkpoint itself (layer counts from the keys, widths from
the shapes) and are checked against every size config.json states; what shapes cannot tell
(attention heads, epsilons, RoPE base, ...) comes from config.json, else from the defaults both
reference loaders use. A DeepSeek config.json names fixed variants (``siglip_large_patch16_384``,
``VQ-16``) rather than sizes, so fine-tuned or test checkpoints in that layout convert as long as
the sizes it does state agree; a real disagreement is an error naming both sides.

Writing: a transformers ``config.json`` (``transformers.JanusConfig``) or a DeepSeek-style one.
The DeepSeek one also records the exact JanusConfig under ``PAIRUNI_KEY`` (ignored by DeepSeek's
code), so values the DeepSeek schema cannot express survive a round trip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pairuni_jax.checkpoint.hf_reader import TRANSFORMERS, CheckpointError
from pairuni_jax.models.janus import JanusConfig

PAIRUNI_KEY = "pairuni_janus_config"
SIGLIP_VARIANT = "siglip_large_patch16_384"
VQ_VARIANT = "VQ-16"

# Used for what neither the shapes nor config.json give: transformers' LlamaConfig defaults (which
# DeepSeek's LlamaConfig(**language_config) also applies), the SigLIP-L variant, and the VQ's
# GroupNorm(32, eps 1e-6) that both implementations hard-code.
FALLBACK: dict[str, Any] = {
    "text.num_heads": 32,
    "text.rms_norm_eps": 1e-6,
    "text.rope_theta": 10000.0,
    "text.max_position_embeddings": 2048,
    "vision.num_heads": 16,
    "vision.layer_norm_eps": 1e-6,
    "vq.num_groups": 32,
    "vq.norm_eps": 1e-6,
    "image_token_id": 100581,
}

# JanusConfig field ← config.json field (dotted paths). A field may be stated in several places.
TRANSFORMERS_FIELDS: tuple[tuple[str, str], ...] = (
    ("text.vocab_size", "text_config.vocab_size"),
    ("text.hidden_size", "text_config.hidden_size"),
    ("text.intermediate_size", "text_config.intermediate_size"),
    ("text.num_layers", "text_config.num_hidden_layers"),
    ("text.num_heads", "text_config.num_attention_heads"),
    ("text.num_kv_heads", "text_config.num_key_value_heads"),
    ("text.head_dim", "text_config.head_dim"),
    ("text.rms_norm_eps", "text_config.rms_norm_eps"),
    ("text.rope_theta", "text_config.rope_parameters.rope_theta"),
    ("text.rope_theta", "text_config.rope_theta"),
    ("text.max_position_embeddings", "text_config.max_position_embeddings"),
    ("vision.hidden_size", "vision_config.hidden_size"),
    ("vision.num_layers", "vision_config.num_hidden_layers"),
    ("vision.num_heads", "vision_config.num_attention_heads"),
    ("vision.image_size", "vision_config.image_size"),
    ("vision.patch_size", "vision_config.patch_size"),
    ("vision.mlp_ratio", "vision_config.mlp_ratio"),
    ("vision.layer_norm_eps", "vision_config.layer_norm_eps"),
    ("text.hidden_size", "vision_config.projection_dim"),
    ("aligner_depth", "vision_config.depth"),
    ("vq.embed_dim", "vq_config.embed_dim"),
    ("vq.num_embeddings", "vq_config.num_embeddings"),
    ("vq.latent_channels", "vq_config.latent_channels"),
    ("vq.in_channels", "vq_config.in_channels"),
    ("vq.base_channels", "vq_config.base_channels"),
    ("vq.channel_multiplier", "vq_config.channel_multiplier"),
    ("vq.num_res_blocks", "vq_config.num_res_blocks"),
    ("vq.out_channels", "vq_config.out_channels"),
    ("vq.grid_size", "vq_config.num_patches"),
    ("text.hidden_size", "vq_config.projection_dim"),
    ("text.hidden_size", "vq_config.image_token_embed_dim"),
    ("aligner_depth", "vq_config.num_hidden_layers"),
    ("image_token_id", "image_token_id"),
)
DEEPSEEK_FIELDS: tuple[tuple[str, str], ...] = (
    ("text.vocab_size", "language_config.vocab_size"),
    ("text.hidden_size", "language_config.hidden_size"),
    ("text.intermediate_size", "language_config.intermediate_size"),
    ("text.num_layers", "language_config.num_hidden_layers"),
    ("text.num_heads", "language_config.num_attention_heads"),
    ("text.num_kv_heads", "language_config.num_key_value_heads"),
    ("text.head_dim", "language_config.head_dim"),
    ("text.rms_norm_eps", "language_config.rms_norm_eps"),
    ("text.rope_theta", "language_config.rope_theta"),
    ("text.max_position_embeddings", "language_config.max_position_embeddings"),
    ("vision.image_size", "vision_config.params.image_size"),
    ("vision.hidden_size", "aligner_config.params.input_dim"),
    ("text.hidden_size", "aligner_config.params.n_embed"),
    ("aligner_depth", "aligner_config.params.depth"),
    ("vq.num_embeddings", "gen_vision_config.params.image_token_size"),
    ("vq.embed_dim", "gen_vision_config.params.n_embed"),
    ("vq.embed_dim", "gen_aligner_config.params.input_dim"),
    ("text.hidden_size", "gen_aligner_config.params.n_embed"),
    ("aligner_depth", "gen_aligner_config.params.depth"),
    ("text.hidden_size", "gen_head_config.params.n_embed"),
    ("text.hidden_size", "gen_head_config.params.image_token_embed"),
    ("vq.num_embeddings", "gen_head_config.params.image_token_size"),
)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, v in flat.items():
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def _norm(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _declared(config: Mapping[str, Any], fmt: str, where: str) -> dict[str, tuple[Any, str]]:
    """JanusConfig field → (value, config.json field) for every field config.json states."""
    flat = _flatten(config)
    if fmt == TRANSFORMERS:
        table = TRANSFORMERS_FIELDS
    else:
        _check_deepseek_variants(flat, where)
        pairuni = _flatten(config.get(PAIRUNI_KEY, {}))
        table = DEEPSEEK_FIELDS + tuple((f, f"{PAIRUNI_KEY}.{f}") for f in pairuni)
    rope_type = flat.get("text_config.rope_parameters.rope_type", "default")
    if rope_type != "default":
        raise CheckpointError(f"{where}: unsupported rope_type {rope_type!r} (only 'default')")
    declared: dict[str, tuple[Any, str]] = {}
    for field, name in table:
        if name not in flat or flat[name] is None:
            continue
        value = _norm(flat[name])
        if field in declared and declared[field][0] != value:
            raise CheckpointError(
                f"{where}: {declared[field][1]} = {declared[field][0]!r} "
                f"disagrees with {name} = {value!r}"
            )
        declared.setdefault(field, (value, name))
    return declared


def _check_deepseek_variants(flat: Mapping[str, Any], where: str) -> None:
    for name, supported in (
        ("vision_config.params.model_name", SIGLIP_VARIANT),
        ("gen_vision_config.cls", VQ_VARIANT),
    ):
        if flat.get(name, supported) != supported:
            raise CheckpointError(
                f"{where}: unsupported {name} {flat[name]!r} (expected {supported!r})"
            )


def _count(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> tuple[int, str]:
    """Number of numbered children under ``prefix`` (highest index + 1) and the evidence."""
    indices = [
        int(k[len(prefix) :].split(".")[0])
        for k in shapes
        if k.startswith(prefix) and k[len(prefix) :].split(".")[0].isdigit()
    ]
    return (max(indices) + 1 if indices else 0), f"keys {prefix}{{n}}.*"


def derive_sizes(shapes: Mapping[str, tuple[int, ...]], where: str) -> dict[str, tuple[Any, str]]:
    """JanusConfig field → (value, evidence) for every size the tensors fix.

    ``shapes``: transformers key → torch-layout shape. Also returns the query and key/value
    widths of the LLM attention as ``text._q_width`` / ``text._kv_width``.
    """

    def dim(key: str, axis: int) -> tuple[int, str]:
        if key not in shapes:
            raise CheckpointError(f"{where}: missing key {key!r}")
        return shapes[key][axis], f"{key} {list(shapes[key])}"

    t, v, q = "model.language_model.", "model.vision_model.", "model.vqmodel."
    sizes = {
        "text.vocab_size": dim(t + "embed_tokens.weight", 0),
        "text.hidden_size": dim(t + "embed_tokens.weight", 1),
        "text.intermediate_size": dim(t + "layers.0.mlp.gate_proj.weight", 0),
        "text.num_layers": _count(shapes, t + "layers."),
        "text._q_width": dim(t + "layers.0.self_attn.q_proj.weight", 0),
        "text._kv_width": dim(t + "layers.0.self_attn.k_proj.weight", 0),
        "vision.hidden_size": dim(v + "embeddings.patch_embedding.weight", 0),
        "vision.patch_size": dim(v + "embeddings.patch_embedding.weight", 2),
        "vision.num_layers": _count(shapes, v + "encoder.layers."),
        "vq.embed_dim": dim(q + "quantize.embedding.weight", 1),
        "vq.num_embeddings": dim(q + "quantize.embedding.weight", 0),
        "vq.latent_channels": dim(q + "post_quant_conv.weight", 0),
        "vq.in_channels": dim(q + "encoder.conv_in.weight", 1),
        "vq.base_channels": dim(q + "encoder.conv_in.weight", 0),
        "vq.num_res_blocks": _count(shapes, q + "encoder.down.0.block."),
        "vq.out_channels": dim(q + "decoder.conv_out.weight", 0),
    }
    positions, evidence = dim(v + "embeddings.position_embedding.weight", 0)
    side = math.isqrt(positions)
    if side * side != positions:
        raise CheckpointError(f"{where}: {evidence}: {positions} positions are not a square grid")
    sizes["vision.image_size"] = side * sizes["vision.patch_size"][0], evidence
    mlp, evidence = dim(v + "encoder.layers.0.mlp.fc1.weight", 0)
    width = sizes["vision.hidden_size"][0]
    if mlp % width:
        raise CheckpointError(f"{where}: {evidence}: MLP width {mlp} is not a multiple of {width}")
    sizes["vision.mlp_ratio"] = mlp // width, evidence
    depth, evidence = _count(shapes, "model.aligner.hidden_layers.")
    gen_depth, gen_evidence = _count(shapes, "model.generation_aligner.hidden_layers.")
    if depth != gen_depth:
        raise CheckpointError(
            f"{where}: aligner depth {depth + 1} ({evidence}) differs from generation aligner "
            f"depth {gen_depth + 1} ({gen_evidence}); both must be equal"
        )
    sizes["aligner_depth"] = depth + 1, evidence
    levels, _ = _count(shapes, q + "encoder.down.")
    base = sizes["vq.base_channels"][0]
    multipliers = []
    for level in range(levels):
        channels, evidence = dim(f"{q}encoder.down.{level}.block.0.conv1.weight", 0)
        if channels % base:
            raise CheckpointError(
                f"{where}: {evidence}: {channels} channels, not a multiple of {base}"
            )
        multipliers.append(channels // base)
    sizes["vq.channel_multiplier"] = tuple(multipliers), f"keys {q}encoder.down.{{n}}.*"
    return sizes


def from_checkpoint(
    shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any], fmt: str, where: str
) -> JanusConfig:
    """The JanusConfig of a checkpoint: sizes from ``shapes``, the rest from ``config``.

    shapes: transformers key → torch-layout shape; config: the parsed config.json; fmt:
    ``"transformers"`` or ``"deepseek"``; where: the config path, for messages.
    """
    declared = _declared(config, fmt, where)
    sizes = derive_sizes(shapes, where)
    for field, (value, evidence) in sizes.items():
        if field in declared and declared[field][0] != value:
            stated, name = declared[field]
            raise CheckpointError(
                f"{where}: {name} = {stated!r}, but the checkpoint has {value!r} ({evidence})"
            )
    values = {
        **FALLBACK,
        **{f: v for f, (v, _) in declared.items()},
        **{f: v for f, (v, _) in sizes.items()},
    }
    _resolve_heads(values, declared, where)
    values["tie_word_embeddings"] = tied_embeddings(shapes, config, fmt)
    factor = 2 ** (len(values["vq.channel_multiplier"]) - 1)
    grid = values.pop("vq.grid_size", None)
    values.setdefault("vq.image_size", grid * factor if grid else values["vision.image_size"])
    try:
        return JanusConfig.from_dict(_nest(values))
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from e


def tied_embeddings(
    shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any], fmt: str
) -> bool:
    """Whether the LM head is the token embeddings, as transformers decides when loading: tied
    when config.json asks for it and the checkpoint stores no ``lm_head.weight`` (with both
    tensors stored, they are loaded as they are). Unstated, transformers' ``JanusConfig`` ties
    and DeepSeek's ``LlamaConfig`` does not."""
    if fmt == TRANSFORMERS:
        stated = config.get("tie_word_embeddings", True)
    else:
        stated = config.get("language_config", {}).get("tie_word_embeddings", False)
        stated = config.get(PAIRUNI_KEY, {}).get("tie_word_embeddings", stated)
    return bool(stated) and "lm_head.weight" not in shapes


def _resolve_heads(
    values: dict[str, Any], declared: Mapping[str, tuple[Any, str]], where: str
) -> None:
    """Sets the LLM head width and key/value heads from the projection widths."""
    q_width, kv_width = values.pop("text._q_width"), values.pop("text._kv_width")
    heads = values["text.num_heads"]
    head_dim = values.get("text.head_dim") or (q_width // heads if q_width % heads == 0 else None)
    if head_dim is None or heads * head_dim != q_width:
        raise CheckpointError(
            f"{where}: q_proj has {q_width} output rows, which is not {heads} heads × head_dim "
            f"{values.get('text.head_dim', '?')}"
        )
    if kv_width % head_dim:
        raise CheckpointError(
            f"{where}: k_proj has {kv_width} rows, not a multiple of head_dim {head_dim}"
        )
    if "text.num_kv_heads" in declared and declared["text.num_kv_heads"][0] != kv_width // head_dim:
        stated, name = declared["text.num_kv_heads"]
        raise CheckpointError(
            f"{where}: {name} = {stated!r}, but k_proj has {kv_width} rows = "
            f"{kv_width // head_dim} heads × {head_dim}"
        )
    values["text.head_dim"] = head_dim
    values["text.num_kv_heads"] = kv_width // head_dim


# -- writing --------------------------------------------------------------------------------------


def transformers_config(config: JanusConfig, dtype: str) -> Any:
    """A ``transformers.JanusConfig`` for ``config``, loadable by ``from_pretrained``.

    dtype: the stored dtype name (``"bfloat16"``, ``"float32"``). Raises ValueError for what
    transformers' Janus cannot express (VQ GroupNorm other than 32 groups / eps 1e-6, a VQ token
    grid different from the SigLIP patch grid).
    """
    import transformers

    t, v, q = config.text, config.vision, config.vq
    if (q.num_groups, q.norm_eps) != (32, 1e-6):
        raise ValueError("transformers' Janus VQ uses GroupNorm(32, eps=1e-6); this model does not")
    if q.grid_size != v.image_size // v.patch_size:
        raise ValueError(
            f"transformers' Janus sets the VQ grid to the SigLIP patch grid "
            f"({v.image_size // v.patch_size}); this model's VQ grid is {q.grid_size}"
        )
    text = transformers.LlamaConfig(
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        head_dim=t.head_dim,
        rms_norm_eps=t.rms_norm_eps,
        rope_theta=t.rope_theta,
        max_position_embeddings=t.max_position_embeddings,
        tie_word_embeddings=False,
    )
    vision = transformers.JanusVisionConfig(
        hidden_size=v.hidden_size,
        num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
        mlp_ratio=v.mlp_ratio,
        layer_norm_eps=v.layer_norm_eps,
        projection_dim=t.hidden_size,
        depth=config.aligner_depth,
        num_image_tokens=v.num_patches,
    )
    vq = transformers.JanusVQVAEConfig(
        embed_dim=q.embed_dim,
        num_embeddings=q.num_embeddings,
        latent_channels=q.latent_channels,
        in_channels=q.in_channels,
        base_channels=q.base_channels,
        channel_multiplier=list(q.channel_multiplier),
        num_res_blocks=q.num_res_blocks,
        out_channels=q.out_channels,
        projection_dim=t.hidden_size,
        image_token_embed_dim=t.hidden_size,
        num_hidden_layers=config.aligner_depth,
    )
    hf = transformers.JanusConfig(
        text_config=text,
        vision_config=vision,
        vq_config=vq,
        image_token_id=config.image_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    hf.architectures = ["JanusForConditionalGeneration"]
    hf.dtype = dtype
    return hf


def deepseek_config(config: JanusConfig, dtype: str) -> dict[str, Any]:
    """The DeepSeek ``MultiModalityCausalLM`` config.json for ``config`` (spec/janus.md §1)."""
    t, v, q = config.text, config.vision, config.vq
    h, depth = t.hidden_size, config.aligner_depth

    def mlp(input_dim: int, model_type: str) -> dict[str, Any]:
        params = {
            "depth": depth,
            "input_dim": input_dim,
            "n_embed": h,
            "projector_type": "mlp_gelu",
        }
        return {"cls": "MlpProjector", "model_type": model_type, "params": params}

    return {
        "architectures": ["MultiModalityCausalLM"],
        "model_type": "multi_modality",
        "torch_dtype": dtype,
        "language_config": {
            "model_type": "llama",
            "vocab_size": t.vocab_size,
            "hidden_size": h,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads,
            "num_key_value_heads": t.num_kv_heads,
            "head_dim": t.head_dim,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_theta": t.rope_theta,
            "max_position_embeddings": t.max_position_embeddings,
            "tie_word_embeddings": config.tie_word_embeddings,
            "torch_dtype": dtype,
        },
        "vision_config": {
            "cls": "CLIPVisionTower",
            "model_type": "vision",
            "params": {
                "image_size": v.image_size,
                "model_name": SIGLIP_VARIANT,
                "select_feature": "same",
                "select_layer": -1,
            },
        },
        "aligner_config": mlp(v.hidden_size, "aligner"),
        "gen_vision_config": {
            "cls": VQ_VARIANT,
            "model_type": "gen_vision",
            "params": {"image_token_size": q.num_embeddings, "n_embed": q.embed_dim},
        },
        "gen_aligner_config": mlp(q.embed_dim, "gen_aligner"),
        "gen_head_config": {
            "cls": "vision_head",
            "model_type": "gen_head",
            "params": {"image_token_embed": h, "image_token_size": q.num_embeddings, "n_embed": h},
        },
        PAIRUNI_KEY: config.to_dict(),
    }
