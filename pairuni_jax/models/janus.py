"""Janus-Pro: SigLIP understanding tower, LLaMA decoder, VQ-16 image tokenizer and the generation heads.

Shape letters: B batch, S sequence, H LLM width, P image tokens per image (576 for Janus-Pro),
V text vocabulary, C image codebook size.

Sub-module names follow transformers' ``JanusModel`` (``vision_model``, ``aligner``, ``vqmodel``,
``generation_embeddings``, ``generation_aligner``, ``generation_head``, ``language_model``) plus
``lm_head``, so a Hugging Face key maps to a Flax path by name (see ``checkpoint/``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pairuni_jax.models.llama import DecoderLayer, KVCache, LlamaConfig, LlamaModel
from pairuni_jax.models.projector import AlignerMLP, GenerationHead
from pairuni_jax.models.siglip import SiglipConfig, SiglipVisionModel
from pairuni_jax.models.stack import RematPolicy
from pairuni_jax.models.vq import VQConfig, VQModel
from pairuni_jax.sharding import axes

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class JanusConfig:
    """The whole model. Presets: ``janus_pro_1b``, ``janus_pro_7b``, ``tiny``.

    tie_word_embeddings: the LM head is the token embedding table (no ``lm_head`` parameter),
    as transformers builds a checkpoint saved with ``tie_word_embeddings: true`` and no
    ``lm_head.weight``. Janus-Pro's own checkpoints are untied.
    """

    text: LlamaConfig = dataclasses.field(default_factory=LlamaConfig)
    vision: SiglipConfig = dataclasses.field(default_factory=SiglipConfig)
    vq: VQConfig = dataclasses.field(default_factory=VQConfig)
    aligner_depth: int = 2
    image_token_id: int = 100581
    tie_word_embeddings: bool = False

    def __post_init__(self):
        if self.aligner_depth < 1:
            raise ValueError(f"aligner_depth must be >= 1, got {self.aligner_depth}")

    @property
    def num_image_tokens(self) -> int:
        """Understanding placeholders per image (SigLIP patches)."""
        return self.vision.num_patches

    @property
    def num_generated_image_tokens(self) -> int:
        """Tokens per generated image (VQ grid, 576 = 24 × 24 for Janus-Pro)."""
        return self.vq.num_tokens

    @classmethod
    def janus_pro_1b(cls) -> JanusConfig:
        return cls(text=LlamaConfig.janus_pro_1b(), vision=SiglipConfig(), vq=VQConfig.vq16())

    @classmethod
    def janus_pro_7b(cls) -> JanusConfig:
        return cls(text=LlamaConfig.janus_pro_7b(), vision=SiglipConfig(), vq=VQConfig.vq16())

    @classmethod
    def tiny(cls) -> JanusConfig:
        return cls(
            text=LlamaConfig.tiny(),
            vision=SiglipConfig.tiny(),
            vq=VQConfig.tiny(),
            image_token_id=3,  # `<image_placeholder>` in the bundled tiny tokenizer
        )

    @classmethod
    def preset(cls, name: str) -> JanusConfig:
        presets = {
            "janus_pro_1b": cls.janus_pro_1b,
            "janus_pro_7b": cls.janus_pro_7b,
            "tiny": cls.tiny,
        }
        if name not in presets:
            raise ValueError(f"unknown Janus preset {name!r}; expected one of {sorted(presets)}")
        return presets[name]()

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": dataclasses.asdict(self.text),
            "vision": dataclasses.asdict(self.vision),
            "vq": self.vq.to_dict(),
            "aligner_depth": self.aligner_depth,
            "image_token_id": self.image_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JanusConfig:
        try:
            return cls(
                text=LlamaConfig(**d["text"]),
                vision=SiglipConfig(**d["vision"]),
                vq=VQConfig.from_dict(d["vq"]),
                aligner_depth=d.get("aligner_depth", 2),
                image_token_id=d["image_token_id"],
                tie_word_embeddings=d.get("tie_word_embeddings", False),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"invalid Janus config: {e!r}") from e


class Janus(nnx.Module):
    """The Janus-Pro model. All methods are pure functions of the parameters and inputs."""

    def __init__(
        self,
        config: JanusConfig,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        scan_layers: bool = True,
        remat: RematPolicy = RematPolicy.NONE,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.dtype = dtype
        h = config.text.hidden_size
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        stack = dict(scan_layers=scan_layers, remat=remat)
        self.vision_model = SiglipVisionModel(config.vision, rngs=rngs, **kw, **stack)
        self.aligner = AlignerMLP(
            config.vision.hidden_size, h, config.aligner_depth, rngs=rngs, **kw
        )
        self.vqmodel = VQModel(config.vq, rngs=rngs, **kw)
        self.generation_embeddings = nnx.Embed(
            config.vq.num_embeddings,
            config.vq.embed_dim,
            embedding_metadata=axes("vocab", None),
            rngs=rngs,
            **kw,
        )
        self.generation_aligner = AlignerMLP(
            config.vq.embed_dim, h, config.aligner_depth, rngs=rngs, **kw
        )
        self.generation_head = GenerationHead(h, config.vq.num_embeddings, rngs=rngs, **kw)
        self.language_model = LlamaModel(config.text, rngs=rngs, **kw, **stack)
        self.lm_head = (
            None  # tied: the head is language_model.embed_tokens (see ``text_logits``)
            if config.tie_word_embeddings
            else nnx.Linear(
                h,
                config.text.vocab_size,
                use_bias=False,
                kernel_metadata=axes("embed", "vocab"),
                kernel_init=nnx.initializers.normal(0.02),
                rngs=rngs,
                **kw,
            )
        )

    # -- understanding -------------------------------------------------------------------------

    def image_features(self, pixel_values: Array) -> Array:
        """pixel_values: float[N, S, S, 3] in [-1, 1] → aligned features [N, P, H]."""
        return self.aligner(self.vision_model(pixel_values.astype(self.dtype)))

    def embed(
        self, input_ids: Array, pixel_values: Array | None = None, image_mask: Array | None = None
    ) -> Array:
        """Token embeddings with image features written over the placeholder positions.

        input_ids: int32[B, S]; pixel_values: float[N, S_img, S_img, 3] (N images, any N ≥ 1);
        image_mask: bool[B, S] marking the N × P placeholder positions, filled in row-major order
        (image 0 fills the first P marked slots, and so on), as the reference's masked scatter.
        Returns [B, S, H].
        """
        embeds = self.language_model.embed_tokens(input_ids)
        if pixel_values is None:
            return embeds
        if image_mask is None:
            image_mask = input_ids == self.config.image_token_id
        features = self.image_features(pixel_values)
        features = features.reshape(-1, features.shape[-1]).astype(embeds.dtype)
        flat_mask = image_mask.reshape(-1)
        slot = jnp.clip(jnp.cumsum(flat_mask) - 1, 0, features.shape[0] - 1)
        merged = jnp.where(flat_mask[:, None], features[slot], embeds.reshape(-1, embeds.shape[-1]))
        return merged.reshape(embeds.shape)

    # -- the language model and its two heads --------------------------------------------------

    def __call__(
        self,
        embeds: Array,
        positions: Array,
        attention_mask: Array,
        cache: KVCache | None = None,
        layers: tuple[DecoderLayer, ...] | None = None,
    ) -> tuple[Array, KVCache | None]:
        """LLM forward: embeds [B, S, H] → final-norm hidden states [B, S, H] (and the cache).

        layers: ``language_model.split_layers()``, computed once by a sampling loop (see
        ``LlamaModel.__call__``)."""
        return self.language_model(embeds, positions, attention_mask, cache, layers)

    def text_logits(self, hidden: Array) -> Array:
        """[B, S, H] → [B, S, V] (the embedding table transposed when tied)."""
        if self.lm_head is None:
            return self.language_model.embed_tokens.attend(hidden)
        return self.lm_head(hidden)

    def image_logits(self, hidden: Array) -> Array:
        """[B, S, H] → [B, S, C] (generation head)."""
        return self.generation_head(hidden)

    # -- generation path -----------------------------------------------------------------------

    def embed_image_tokens(self, tokens: Array) -> Array:
        """Feedback embedding of sampled image tokens: int32[...] → [..., H]."""
        return self.generation_aligner(self.generation_embeddings(tokens))

    def decode_image_tokens(self, tokens: Array) -> Array:
        """int32[B, P] → pixels float[B, S, S, 3], nominally in [-1, 1] (not clipped)."""
        return self.vqmodel.decode_tokens(tokens)

    def encode_images(self, pixels: Array) -> Array:
        """pixels float[B, S, S, 3] in [-1, 1] → VQ tokens int32[B, P]."""
        return self.vqmodel.encode(pixels)


def positions_from_mask(attention_mask: Array) -> Array:
    """RoPE positions for left-padded rows: the number of real tokens before each position."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)
