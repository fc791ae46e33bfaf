"""Janus chat templates and prompt tokenization (``spec/janus.md`` §4.2-4.4 and §5.1).

Understanding (system prompt, one image, the question)::

    <SYS>\\n\\n<|User|>: <image_placeholder>\\n{question}\\n\\n<|Assistant|>:

Generation (no system prompt, the image starts right after the assistant tag)::

    <|User|>: {prompt}\\n\\n<|Assistant|>:<begin_of_image>

Token ids of the special tokens are resolved from the tokenizer by string, never hard-coded. Janus
prompts start with BOS: the encoder puts it there itself, exactly once, whether or not the
tokenizer adds it (the Janus tokenizer does; a user's own saved tokenizer may not). In the
understanding ids the single ``<image_placeholder>`` becomes
``<begin_of_image> + N x <image_placeholder> + <end_of_image>``, N = the model's image tokens
(576 for Janus-Pro, 16 for the tiny model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
IMAGE = "<image_placeholder>"
BEGIN_OF_IMAGE = "<begin_of_image>"
END_OF_IMAGE = "<end_of_image>"
USER = "<|User|>"
ASSISTANT = "<|Assistant|>"
SPECIAL_TOKENS = (BOS, EOS, PAD, IMAGE, BEGIN_OF_IMAGE, END_OF_IMAGE, USER, ASSISTANT)

SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using natural "
    "language."
)


def render_chat(messages: Sequence[tuple[str, str]], system_prompt: str = "") -> str:
    """The "deepseek" SFT template: ``messages`` are (role, content) pairs, alternating user and
    assistant; an empty content leaves the turn open (``"<|Assistant|>:"``)."""
    separators = ("\n\n", EOS)
    text = system_prompt + separators[0] if system_prompt else ""
    for i, (role, content) in enumerate(messages):
        content = content.strip()
        text += f"{role}: {content}{separators[i % 2]}" if content else f"{role}:"
    return text.strip()


def understanding_prompt(question: str, system_prompt: str = SYSTEM_PROMPT) -> str:
    """The understanding prompt for one image and ``question`` (spec §4.2)."""
    return render_chat([(USER, f"{IMAGE}\n{question}"), (ASSISTANT, "")], system_prompt)


def generation_prompt(prompt: str) -> str:
    """The text-to-image prompt, ending in ``<begin_of_image>`` (spec §5.1)."""
    return render_chat([(USER, prompt), (ASSISTANT, "")]) + BEGIN_OF_IMAGE


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Ids of the Janus special tokens in one tokenizer."""

    bos: int
    eos: int
    pad: int
    image: int
    begin_of_image: int
    end_of_image: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> SpecialIds:
        """Resolves every id by string; raises naming the token the tokenizer lacks."""
        ids = {}
        for token in SPECIAL_TOKENS:
            encoded = tokenizer.encode(token, add_special_tokens=False)
            token_id = tokenizer.convert_tokens_to_ids(token)
            if encoded != [token_id] or tokenizer.convert_ids_to_tokens(token_id) != token:
                raise ValueError(
                    f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} does not have the Janus "
                    f"special token {token!r} as a single token (it encodes to {encoded}); every "
                    f"one of {list(SPECIAL_TOKENS)} is required"
                )
            ids[token] = token_id
        return cls(ids[BOS], ids[EOS], ids[PAD], ids[IMAGE], ids[BEGIN_OF_IMAGE], ids[END_OF_IMAGE])


class PromptEncoder:
    """Renders and tokenizes the two prompts of a pair.

    Args:
      tokenizer: a Hugging Face tokenizer with the Janus special tokens (it need not add BOS).
      num_image_tokens: N, the image tokens one image expands to (576 real, 16 tiny).
      system_prompt: the understanding system prompt (the Janus one by default).
    """

    def __init__(self, tokenizer: Any, num_image_tokens: int, system_prompt: str = SYSTEM_PROMPT):
        if num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.system_prompt = system_prompt
        self.ids = SpecialIds.from_tokenizer(tokenizer)

    def understanding_ids(self, question: str) -> np.ndarray:
        """int32[Lu']: BOS, the understanding prompt, the image placeholder expanded to N tokens."""
        ids = self._encode(understanding_prompt(question, self.system_prompt))
        positions = np.flatnonzero(ids == self.ids.image)
        if len(positions) != 1:
            raise ValueError(
                f"expected one {IMAGE} in the understanding prompt, found "
                f"{len(positions)}: the question must not contain special tokens"
            )
        image = [self.ids.begin_of_image] + [self.ids.image] * self.num_image_tokens
        image.append(self.ids.end_of_image)
        at = int(positions[0])
        return np.concatenate([ids[:at], np.asarray(image, np.int32), ids[at + 1 :]])

    def generation_ids(self, prompt: str) -> np.ndarray:
        """int32[Lg']: BOS, the generation prompt, ``<begin_of_image>`` last and only there."""
        return self._image_prompt_ids(generation_prompt(prompt))

    def plain_generation_ids(self, text: str) -> np.ndarray:
        """int32[L]: BOS, ``text`` as it is, ``<begin_of_image>``; no chat template.

        What transformers' ``JanusProcessor(generation_mode="image")`` builds (its integration
        test's prompt, 17 ids with the Janus-Pro tokenizer); ``pairuni verify`` uses it.
        """
        return self._image_prompt_ids(text + BEGIN_OF_IMAGE)

    def _image_prompt_ids(self, text: str) -> np.ndarray:
        ids = self._encode(text)
        if ids[-1] != self.ids.begin_of_image or np.sum(ids == self.ids.begin_of_image) != 1:
            raise ValueError(
                f"{BEGIN_OF_IMAGE} must be the last generation-prompt token and "
                "appear only there: the prompt must not contain special tokens"
            )
        return ids

    def _encode(self, text: str) -> np.ndarray:
        """int32[L]: BOS, then the tokens of ``text`` without the tokenizer's own special tokens
        (CFG's unconditional prompt keeps position 0, so BOS must be there, once)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if ids[:1] != [self.ids.bos]:
            ids = [self.ids.bos, *ids]
        return np.asarray(ids, dtype=np.int32)


def left_pad(ids: np.ndarray, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads ``ids: int32[L']`` to ``length``; returns (int32[length], bool[length] mask)."""
    if len(ids) > length:
        raise ValueError(f"{len(ids)} tokens do not fit in {length}")
    padded = np.full(length, pad_id, dtype=np.int32)
    mask = np.zeros(length, dtype=bool)
    if len(ids):
        padded[length - len(ids) :] = ids
        mask[length - len(ids) :] = True
    return padded, mask


def load_tokenizer(directory: str | Path) -> Any:
    """A Hugging Face tokenizer from a directory of tokenizer files (no hub access)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
