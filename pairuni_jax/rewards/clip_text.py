"""Host side of the HPS text input: CLIP tokenizer, prompt ids and precomputed prompt features.

The reward directory holds the CLIP BPE tokenizer in Hugging Face format. ``clip_token_ids``
reproduces open_clip's ``tokenize`` (spec/hpsv2.md §1.4): ftfy + double HTML unescape + whitespace
clean + lower case, ``[SOT] + bpe + [EOT]``, cut to 77 with EOT kept last, zero padding. The
tokenizer's own normaliser does not fix text or unescape HTML, hence the cleaning here.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path

import ftfy
import jax
import numpy as np
from flax import nnx
from transformers import CLIPTokenizerFast

from pairuni_jax.models.clip import CLIP
from pairuni_jax.rewards.hps import prompt_features


def load_clip_tokenizer(directory: str | Path) -> CLIPTokenizerFast:
    """The CLIP tokenizer stored in a reward directory (``pairuni convert hpsv2``)."""
    return CLIPTokenizerFast.from_pretrained(str(directory))


def clean_prompt(text: str) -> str:
    """open_clip's ``clean='lower'``: ftfy, HTML unescape twice, collapse whitespace, lower."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


def clip_token_ids(
    tokenizer: CLIPTokenizerFast, texts: Sequence[str], context_length: int = 77
) -> np.ndarray:
    """int32[len(texts), context_length] ids, identical to ``open_clip.tokenize(texts)``.

    (Except for prompts that spell open_clip's special tokens, ``<start_of_text>``, literally.)
    """
    cleaned = [clean_prompt(t) for t in texts]
    encoded = tokenizer(cleaned, add_special_tokens=True, verbose=False)["input_ids"]
    ids = np.zeros((len(texts), context_length), np.int32)
    for row, tokens in enumerate(encoded):
        if len(tokens) > context_length:
            tokens = [*tokens[: context_length - 1], tokenizer.eos_token_id]
        ids[row, : len(tokens)] = tokens
    return ids


def encode_prompts(
    model: CLIP, tokenizer: CLIPTokenizerFast, prompts: Sequence[str], batch_size: int = 64
) -> np.ndarray:
    """Normalised text features float32[len(prompts), D], computed once per prompt.

    This is what the trainer feeds ``hps_score(..., text_features=...)``: the text tower then
    stays out of the train step. The last batch is padded to ``batch_size`` (one compilation).
    """
    graphdef, state = nnx.split(model)

    @jax.jit
    def features(state: nnx.State, ids: jax.Array) -> jax.Array:
        return prompt_features(nnx.merge(graphdef, state), ids)

    context = model.config.text.context_length
    out = []
    for start in range(0, len(prompts), batch_size):
        ids = clip_token_ids(tokenizer, prompts[start : start + batch_size], context)
        padded = np.zeros((batch_size, context), np.int32)
        padded[: len(ids)] = ids
        out.append(np.asarray(features(state, padded))[: len(ids)])
    return np.concatenate(out) if out else np.zeros((0, model.config.embed_dim), np.float32)
