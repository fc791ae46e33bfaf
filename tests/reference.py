"""Reference models for parity tests: tiny random transformers Janus models, perturbed, and their Flax twins."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from pairuni_jax.checkpoint import janus_mapping
from pairuni_jax.models.janus import Janus, JanusConfig


def hf_config(config: JanusConfig) -> transformers.JanusConfig:
    """The transformers ``JanusConfig`` with the same architecture as ``config``."""
    t, v, q = config.text, config.vision, config.vq
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
        tie_word_embeddings=False,
    )
    hf.vq_config.num_patches = q.grid_size
    return hf


def perturb_(model: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Adds N(0, scale²) noise to every parameter so norms, biases and positions are non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def tiny_hf_model(config: JanusConfig, seed: int = 0) -> transformers.JanusForConditionalGeneration:
    torch.manual_seed(seed)
    model = transformers.JanusForConditionalGeneration(hf_config(config)).eval().float()
    perturb_(model, seed)
    return model


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def flax_from_hf(hf_model, config: JanusConfig, **kw) -> Janus:
    """A Flax ``Janus`` holding the weights of ``hf_model`` (via the checkpoint mapping rules)."""
    abstract = nnx.eval_shape(lambda: Janus(config, rngs=nnx.Rngs(0), **kw))
    graphdef, state = nnx.split(abstract)
    params = janus_mapping.load_hf_state_dict(nnx.to_pure_dict(state), state_dict_numpy(hf_model))
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    return nnx.merge(graphdef, state)


def to_torch_pixels(pixels_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(pixels_nhwc).transpose(0, 3, 1, 2)))
