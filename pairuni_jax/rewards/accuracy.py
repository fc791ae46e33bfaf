"""Understanding rewards from token ids, in the graph: multiple-choice accuracy and answer format.

At start-up ``OptionLetterTable.from_tokenizer`` decodes every token of the policy tokenizer once
and gives it a class: an option letter (``A``, `` A``, ``A.``, ``(A)``, ``**A**`` ... -> 0 for A,
1 for B, ...), ``NEUTRAL`` (whitespace, punctuation, symbols, special tokens: skipped) or ``OTHER``
(any other text, e.g. ``Apple``, `` a``, ``1``), and whether it glues onto a preceding word (its
text starts with a letter or digit, no space: ``ecause``), so that a letter token followed by one
(``B`` + ``ecause``) is a word, not an answer. In the graph, the answer is the first non-neutral
token of the completion, or of the text after the ``<answer>`` tag when a tag pair is
configured; no host decode. Tags are matched as token-id sequences: each tag is tokenised in
several contexts (before: nothing, space, newline, ``>``, ``.``; after: nothing, space, newline,
a letter), so merges with the neighbouring text are covered.

Shape letters: B completions, T completion tokens, V vocabulary, N tag variants, K tag tokens.
"""

from __future__ import annotations

import dataclasses
import itertools
import unicodedata
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NEUTRAL = -2
OTHER = -1
CLASS, JOINS = 0, 1  # columns of the table
DEFAULT_LETTERS = "ABCDEFGH"
TAG_BEFORE = ("", " ", "\n", ">", ".")
TAG_AFTER = ("", " ", "\n", "A")


class LetterTableArrays(NamedTuple):
    """Device arrays of an ``OptionLetterTable`` (a pytree; tags are None without a tag pair)."""

    table: jax.Array  # int32[V, 2]: CLASS, JOINS
    open_tag: jax.Array | None  # int32[N, K], -1 padded
    close_tag: jax.Array | None  # int32[N, K], -1 padded


@dataclasses.dataclass(frozen=True, eq=False)
class OptionLetterTable:
    """Token id -> (option-letter class, joins-a-word flag), and answer-tag patterns (NumPy)."""

    letters: str
    table: np.ndarray  # int32[V, 2]
    open_tag: np.ndarray | None = None  # int32[N, K]
    close_tag: np.ndarray | None = None

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        letters: str = DEFAULT_LETTERS,
        answer_tag: tuple[str, str] | None = None,
        vocab_size: int | None = None,
    ) -> OptionLetterTable:
        """Classifies every token id of a Hugging Face fast tokenizer.

        letters: the option letters, in answer-index order.
        answer_tag: e.g. ``("<answer>", "</answer>")``: the answer is read after the open tag.
        vocab_size: table size when the model's vocabulary is larger than the tokenizer's
          (ids without a token count as ``OTHER``).
        """
        if len(set(letters)) != len(letters) or not all(len(c) == 1 for c in letters):
            raise ValueError(
                f"OptionLetterTable: letters must be distinct characters, got {letters!r}"
            )
        size = max(len(tokenizer), vocab_size or 0)
        decode = lambda seqs: tokenizer.batch_decode(  # noqa: E731
            seqs, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        ids = range(len(tokenizer))
        texts = decode([[i] for i in ids])
        # A token joins a word when, decoded right after "A", its text starts with a letter or
        # digit (decoding in context keeps SentencePiece's word-start spaces).
        probe = tokenizer("A", add_special_tokens=False)["input_ids"]
        prefix = len(decode([probe])[0])
        after = decode([[*probe, i] for i in ids])
        table = np.full((size, 2), OTHER, np.int32)
        table[: len(texts), CLASS] = [classify_token(t, letters) for t in texts]
        table[: len(texts), JOINS] = [t[prefix : prefix + 1].isalnum() for t in after]
        table[[i for i in tokenizer.all_special_ids if i < size], CLASS] = NEUTRAL
        if answer_tag is None:
            return cls(letters, table)
        if not tokenizer.is_fast:
            raise ValueError("OptionLetterTable: answer tags need a fast tokenizer (offsets)")
        open_tag, close_tag = answer_tag
        return cls(
            letters, table, tag_patterns(tokenizer, open_tag), tag_patterns(tokenizer, close_tag)
        )

    def arrays(self) -> LetterTableArrays:
        as_jax = lambda a: None if a is None else jnp.asarray(a, jnp.int32)  # noqa: E731
        return LetterTableArrays(as_jax(self.table), as_jax(self.open_tag), as_jax(self.close_tag))

    def letter_index(self, letter: str) -> int:
        """Answer index of a record's answer letter (``"B"`` -> 1)."""
        index = self.letters.find(letter.strip())
        if index < 0 or len(letter.strip()) != 1:
            raise ValueError(f"answer {letter!r} is not one of the option letters {self.letters!r}")
        return index


def classify_token(text: str, letters: str) -> int:
    """Class of one decoded token: a letter index, ``NEUTRAL`` or ``OTHER``."""
    if all(_is_neutral_char(c) for c in text):
        return NEUTRAL
    core = text
    while _is_neutral_char(core[0]):
        core = core[1:]
    while _is_neutral_char(core[-1]):
        core = core[:-1]
    return letters.index(core) if len(core) == 1 and core in letters else OTHER


def _is_neutral_char(c: str) -> bool:
    # U+FFFD stands for part of a multi-byte character: content, not punctuation.
    return c != "\ufffd" and (c.isspace() or unicodedata.category(c)[0] in "PSZ")


def tag_patterns(tokenizer: Any, tag: str) -> np.ndarray:
    """int32[N, K]: the distinct token sequences that spell ``tag`` in context, -1 padded.

    A token that straddles the tag and its neighbour belongs to the pattern.
    """
    patterns = set()
    for before, after in itertools.product(TAG_BEFORE, TAG_AFTER):
        enc = tokenizer(before + tag + after, add_special_tokens=False, return_offsets_mapping=True)
        lo, hi = len(before), len(before) + len(tag)
        pairs = zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        patterns.add(tuple(i for i, (s, e) in pairs if s < hi and e > lo))
    width = max(len(p) for p in patterns)
    return np.array([[*p, *[-1] * (width - len(p))] for p in sorted(patterns)], np.int32)


def accuracy_reward(
    table_array: jax.Array,
    completion_ids: jax.Array,
    completion_mask: jax.Array,
    answer_index: jax.Array,
    *,
    open_tag: jax.Array | None = None,
) -> jax.Array:
    """1 where the completion's answer letter is the record's, else 0.

    table_array: int32[V, 2] (``OptionLetterTable.arrays().table``).
    completion_ids: int32[B, T]; completion_mask: bool[B, T] (True on generated tokens).
    answer_index: int32[B], 0 for "A". open_tag: int32[N, K] patterns, or None (no tag).
    Returns float32[B].
    """
    letter = answer_letter(table_array, completion_ids, completion_mask, open_tag=open_tag)
    return (letter == answer_index).astype(jnp.float32)


def answer_letter(
    table_array: jax.Array,
    completion_ids: jax.Array,
    completion_mask: jax.Array,
    *,
    open_tag: jax.Array | None = None,
) -> jax.Array:
    """The option letter each completion answers: int32[B], 0 for "A", ``OTHER`` (-1) when it
    gives none (no open tag, nothing after it, or a first non-neutral token that is not a
    letter). Shapes as in ``accuracy_reward``, which compares this with the answer index."""
    classes, positions = _classes(table_array, completion_ids, completion_mask)
    found, start = _answer_start(completion_ids, completion_mask, open_tag)
    content = (classes != NEUTRAL) & (positions >= start[:, None])
    letter = _at(classes, jnp.argmax(content, axis=-1))
    return jnp.where(found & content.any(-1), letter, OTHER)


def format_reward(
    table_array: jax.Array,
    completion_ids: jax.Array,
    completion_mask: jax.Array,
    *,
    open_tag: jax.Array | None = None,
    close_tag: jax.Array | None = None,
) -> jax.Array:
    """1 where the answer is exactly one option letter (inside the tag pair when given), else 0.

    Without tags the whole completion must be one letter token plus neutral tokens (``"(B)."``);
    with tags, ``... <answer> B </answer> ...``. Shapes as in ``accuracy_reward``.
    """
    if (open_tag is None) != (close_tag is None):
        raise ValueError("format_reward: pass both open_tag and close_tag, or neither")
    classes, positions = _classes(table_array, completion_ids, completion_mask)
    found, start = _answer_start(completion_ids, completion_mask, open_tag)
    end = jnp.full_like(start, completion_ids.shape[1])
    if close_tag is not None:
        closed, close_begin, _ = _first_match(completion_ids, completion_mask, close_tag, start)
        found, end = found & closed, close_begin
    content = (classes != NEUTRAL) & (positions >= start[:, None]) & (positions < end[:, None])
    letter = _at(classes, jnp.argmax(content, axis=-1))
    ok = found & (content.sum(-1) == 1) & (letter >= 0)
    return ok.astype(jnp.float32)


def _classes(table: jax.Array, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """int32[B, T] classes and int32[1, T] positions.

    Outside the mask: NEUTRAL. A letter glued to the next token (``B`` + ``ecause``): OTHER.
    """
    rows = jnp.take(table, ids, axis=0, mode="fill", fill_value=OTHER)  # [B, T, 2]
    joins_next = jnp.pad((rows[:, 1:, JOINS] == 1) & mask[:, 1:], ((0, 0), (0, 1)))
    classes = jnp.where((rows[..., CLASS] >= 0) & joins_next, OTHER, rows[..., CLASS])
    classes = jnp.where(mask, classes, NEUTRAL)
    return classes, jnp.arange(ids.shape[1], dtype=jnp.int32)[None]


def _answer_start(
    ids: jax.Array, mask: jax.Array, open_tag: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """bool[B] (tag found, or no tag configured) and int32[B] first answer position."""
    if open_tag is None:
        return jnp.ones(ids.shape[0], bool), jnp.zeros(ids.shape[0], jnp.int32)
    found, _, end = _first_match(ids, mask, open_tag, jnp.zeros(ids.shape[0], jnp.int32))
    return found, end


def _first_match(
    ids: jax.Array, mask: jax.Array, patterns: jax.Array, from_pos: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """First occurrence at or after ``from_pos`` [B] of any pattern [N, K] inside the mask.

    Returns found bool[B], begin int32[B] and end int32[B] (one past the match).
    """
    batch, length = ids.shape
    width = patterns.shape[1]
    padded = jnp.pad(jnp.where(mask, ids, -1), ((0, 0), (0, width)), constant_values=-1)
    windows = jnp.stack([padded[:, k : k + length] for k in range(width)], axis=-1)  # [B,T,K]
    wildcard = patterns < 0
    hits = ((windows[:, :, None] == patterns) | wildcard).all(-1)  # [B, T, N]
    positions = jnp.arange(length, dtype=jnp.int32)
    hits &= (positions[None, :] >= from_pos[:, None])[..., None]
    lengths = jnp.sum(~wildcard, axis=-1, dtype=jnp.int32)  # [N]
    match_length = jnp.max(jnp.where(hits, lengths, 0), axis=-1)  # [B, T]
    any_hit = hits.any(-1)
    begin = jnp.argmax(any_hit, axis=-1).astype(jnp.int32)
    return any_hit.any(-1), begin, begin + _at(match_length, begin)


def _at(x: jax.Array, index: jax.Array) -> jax.Array:
    """x[b, index[b]] for x [B, T], index [B]."""
    return jnp.take_along_axis(x, index[:, None], axis=-1)[:, 0]
