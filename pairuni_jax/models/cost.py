"""Matmul FLOPs of each model part, as the modules in ``models/`` compute them (global, forward).

Counts matrix-multiply and convolution FLOPs only (2 per multiply-add; norms, softmax and
elementwise work are left out, as in the usual MFU convention), as computed:

- causal self-attention (``llama.causal_attention``) runs in query blocks of
  ``llama.CAUSAL_BLOCK``, each over the keys up to its own last position, so the masked upper
  triangle of whole blocks is never computed;
- attention over a KV cache reads every slot of the cache (masked ones included);
- convolutions count the multiply-adds that meet a real input pixel (taps on the zero padding of a
  'same' convolution are not work), the convention ``plan.hlo.count_program`` reads HLO with.
"""

from __future__ import annotations

from pairuni_jax.models.clip import CLIPConfig
from pairuni_jax.models.llama import CAUSAL_BLOCK, LlamaConfig
from pairuni_jax.models.siglip import SiglipConfig
from pairuni_jax.models.vq import VQConfig

HPS_TEXT_LENGTH = 77


def linear(rows: int, din: int, dout: int) -> float:
    return 2.0 * rows * din * dout


def llm_layer_params(text: LlamaConfig) -> int:
    """Matmul parameters of one decoder layer (q, k, v, o projections and the SwiGLU MLP)."""
    h, d = text.hidden_size, text.head_dim
    attention = h * text.num_heads * d * 2 + h * text.num_kv_heads * d * 2
    return attention + 3 * h * text.intermediate_size


def causal_pairs(length: int, block: int = CAUSAL_BLOCK) -> int:
    """(query, key) pairs ``causal_attention`` computes for ``length`` positions: block [a, b)
    of queries against keys [0, b)."""
    return sum(
        (min(a + block, length) - a) * min(a + block, length) for a in range(0, length, block)
    )


def llm_forward(text: LlamaConfig, rows: int, queries: int, keys: int | None = None) -> float:
    """The decoder stack (no embedding, no head): ``rows`` sequences of ``queries`` new positions
    attending to ``keys`` cache slots each, or, with ``keys=None``, causally to themselves."""
    dense = 2.0 * text.num_layers * llm_layer_params(text) * rows * queries
    return dense + llm_attention(text, rows, queries, keys)


def llm_attention(text: LlamaConfig, rows: int, queries: int, keys: int | None = None) -> float:
    """The part of ``llm_forward`` with no parameter operand: the scores and the weighted values
    (q·kᵀ and p·v) of every layer."""
    pairs = queries * keys if keys is not None else causal_pairs(queries)
    return 4.0 * text.num_layers * text.num_heads * text.head_dim * rows * pairs


def vit_layers(width: int, mlp: int, layers: int, images: int, tokens: int) -> float:
    """Pre-norm ViT blocks: q, k, v, out projections, the MLP and the attention itself."""
    dense = linear(images * tokens, width, 4 * width + 2 * mlp)
    attention = 4.0 * images * tokens * tokens * width
    return layers * (dense + attention)


def siglip_forward(vision: SiglipConfig, images: int) -> float:
    p = vision.num_patches
    patches = linear(images * p, vision.patch_size**2 * 3, vision.hidden_size)
    return patches + vit_layers(vision.hidden_size, vision.mlp_dim, vision.num_layers, images, p)


def aligner(din: int, dout: int, depth: int, rows: int) -> float:
    return linear(rows, din, dout) + (depth - 1) * linear(rows, dout, dout)


def generation_head(hidden: int, codebook: int, rows: int) -> float:
    return linear(rows, hidden, hidden) + linear(rows, hidden, codebook)


def _same_taps(side: int, kernel: int) -> int:
    """(output, tap) pairs on real pixels of a stride-1 'same' convolution along one axis."""
    pad = kernel // 2
    return side * kernel - pad * (pad + 1)


def _conv(side: int, kernel: int, c_in: int, c_out: int) -> float:
    return 2.0 * _same_taps(side, kernel) ** 2 * c_in * c_out


def _resnet(side: int, c_in: int, c_out: int) -> float:
    shortcut = _conv(side, 1, c_in, c_out) if c_in != c_out else 0.0
    return _conv(side, 3, c_in, c_out) + _conv(side, 3, c_out, c_out) + shortcut


def _attn_block(side: int, c: int) -> float:
    return 4 * _conv(side, 1, c, c) + 4.0 * (side * side) ** 2 * c


def vq_decode(vq: VQConfig, images: int) -> float:
    """``post_quant_conv`` + decoder (as ``models.vq.Decoder``) for ``images`` token grids."""
    widths = [vq.base_channels * m for m in reversed(vq.channel_multiplier)]
    side = vq.grid_size
    total = _conv(side, 1, vq.embed_dim, vq.latent_channels)
    total += _conv(side, 3, vq.latent_channels, widths[0])
    total += 2 * _resnet(side, widths[0], widths[0]) + _attn_block(side, widths[0])
    for i, width in enumerate(widths):
        c_in = widths[max(i - 1, 0)]
        for block in range(vq.num_res_blocks + 1):
            total += _resnet(side, c_in if block == 0 else width, width)
            if i == 0:
                total += _attn_block(side, width)
        if i != len(widths) - 1:
            side *= 2
            total += _conv(side, 3, width, width)
    return images * (total + _conv(side, 3, widths[-1], vq.out_channels))


def clip_image(clip: CLIPConfig, images: int) -> float:
    v = clip.vision
    patches = linear(images * (v.num_tokens - 1), v.patch_size**2 * 3, v.width)
    body = vit_layers(v.width, v.mlp_dim, v.layers, images, v.num_tokens)
    return patches + body + linear(images, v.width, clip.embed_dim)


def clip_text(clip: CLIPConfig, prompts: int) -> float:
    t = clip.text
    body = vit_layers(t.width, t.mlp_dim, t.layers, prompts, HPS_TEXT_LENGTH)
    return body + linear(prompts, t.width, clip.embed_dim)
