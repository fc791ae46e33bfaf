"""Reference models for parity tests: tiny random transformers Janus models, perturbed, and their Flax twins."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from pairuni_jax.checkpoint import hf_config, janus_mapping
from pairuni_jax.models.janus import Janus, JanusConfig


def perturb_(model: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Adds N(0, scale²) noise to every parameter so norms, biases and positions are non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def tiny_hf_model(config: JanusConfig, seed: int = 0) -> transformers.JanusForConditionalGeneration:
    torch.manual_seed(seed)
    model = (
        transformers.JanusForConditionalGeneration(hf_config.transformers_config(config, "float32"))
        .eval()
        .float()
    )
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
