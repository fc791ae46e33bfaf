"""Multiple-choice accuracy: greedy answers to questions about images, scored by answer letter.

Each question becomes the understanding prompt of ``pairuni answer`` (``PromptEncoder.
understanding_ids``: the Janus chat template with its system prompt, the image placeholder
expanded) and its image the Janus preprocessing (``data.images.load_and_preprocess``). Batches of
B questions are left-padded to one prompt length L (the longest question of the set), so the
program compiles once; the last batch is padded with copies of its last question.

The compiled program (``AnswerProgram``) decodes greedily (``rollout.sample_text``) and reads each
answer's option letter with the accuracy reward's own code (``rewards.accuracy.answer_letter``,
answer tags honoured), so a prediction scores 1 exactly when the training reward would.

Shape letters: B questions per batch, L prompt length, N = ``max_new_tokens``, S image side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from pairuni_jax.data.images import load_and_preprocess
from pairuni_jax.data.prompts import PromptEncoder, left_pad
from pairuni_jax.data.records import ErrorKind, Issue
from pairuni_jax.evaluation.batching import (
    DEFAULT_PLACEMENT,
    Placement,
    Throughput,
    padded_chunks,
    run_pipelined,
)
from pairuni_jax.evaluation.inputs import InputError, Question
from pairuni_jax.rewards.accuracy import LetterTableArrays, OptionLetterTable, answer_letter
from pairuni_jax.rollout.text import TextSettings, sample_text

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Answer:
    """A question, the decoded answer (special tokens removed, as ``pairuni answer`` prints it),
    the option letter read from it (None: no option letter) and the verdict."""

    question: Question
    output: str
    prediction: str | None
    correct: bool


class AnswerProgram:
    """Greedy answers and their option letters for one batch, one ``jax.jit`` program.

    graphdef: the policy's graph; calls pass the matching states (``nnx.split(model)[1:]``, or
      the train state's ``(params, frozen)``). settings: the answer length and EOS/PAD ids
      (greedy is forced). image_id: the ``<image_placeholder>`` token id.
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        settings: TextSettings,
        image_id: int,
        placement: Placement = DEFAULT_PLACEMENT,
    ):
        self.graphdef = graphdef
        self.settings = dataclasses.replace(settings, greedy=True, samples_per_prompt=1)
        self.image_id = image_id
        self.placement = placement
        self._jitted = jax.jit(self._answer, out_shardings=placement.out_sharding)

    def _answer(self, states, letters: LetterTableArrays, input_ids, prompt_mask, pixels):
        model = nnx.merge(self.graphdef, *states)
        rollout = sample_text(
            model,
            input_ids,
            prompt_mask,
            pixels,
            input_ids == self.image_id,
            jax.random.key(0),  # greedy: the key draws nothing
            self.settings,
        )
        letter = answer_letter(
            letters.table, rollout.tokens, rollout.mask, open_tag=letters.open_tag
        )
        return rollout.tokens, rollout.lengths, letter

    def __call__(
        self,
        states: tuple[nnx.State, ...],
        letters: LetterTableArrays,
        input_ids: np.ndarray,
        prompt_mask: np.ndarray,
        pixels: np.ndarray,
    ) -> tuple[Array, Array, Array]:
        """input_ids int32[B, L], prompt_mask bool[B, L], pixels float32[B, S, S, 3] (host).

        Returns tokens int32[B, N], lengths int32[B] (EOS included) and letter int32[B]
        (0 for "A", -1 for none), without waiting for them."""
        put = self.placement.put
        return self._jitted(states, letters, put(input_ids), put(prompt_mask), put(pixels))

    def compiled_programs(self) -> int:
        """How many programs were compiled (one per batch shape)."""
        return self._jitted._cache_size()


class QuestionSet:
    """Questions tokenized once, at the prompt length L of the longest.

    Raises ``ValueError`` when the longest prompt plus the answer does not fit the model's
    positions (``max_positions``), naming that question.
    """

    def __init__(
        self,
        questions: Sequence[Question],
        encoder: PromptEncoder,
        image_size: int,
        max_new_tokens: int,
        max_positions: int,
    ):
        if not questions:
            raise ValueError("no questions to evaluate")
        self.questions = list(questions)
        self.encoder = encoder
        self.image_size = image_size
        self.ids = [encoder.understanding_ids(q.question) for q in self.questions]
        longest = int(np.argmax([len(ids) for ids in self.ids]))
        self.prompt_length = len(self.ids[longest])
        if self.prompt_length + max_new_tokens > max_positions:
            q = self.questions[longest]
            raise ValueError(
                f"{q.file}:{q.line}: the understanding prompt is {self.prompt_length} tokens; "
                f"with {max_new_tokens} new tokens it exceeds the model's {max_positions} positions"
            )

    def batch(self, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ids int32[B, L], mask bool[B, L], pixels float32[B, S, S, 3] of these questions."""
        rows = [left_pad(self.ids[i], self.prompt_length, self.encoder.ids.pad) for i in positions]
        pixels = [self._pixels(self.questions[i]) for i in positions]
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), np.stack(pixels)

    def _pixels(self, question: Question) -> np.ndarray:
        try:
            return load_and_preprocess(question.open_image(), self.image_size)
        except Exception as e:  # re-raised with the question's location
            field = "image" if isinstance(question.image, bytes) else "image_path"
            message = f"{type(e).__name__}: {e}"
            issue = Issue(ErrorKind.UNREADABLE_IMAGE, question.file, question.line, field, message)
            raise InputError([issue]) from e


def answer_questions(
    program: AnswerProgram,
    states: tuple[nnx.State, ...],
    letters: OptionLetterTable,
    questions: QuestionSet,
    *,
    batch_size: int,
    show_progress: bool = True,
) -> tuple[list[Answer], Throughput]:
    """Answers every question greedily in batches of ``batch_size``; returns the answers in
    question order and the throughput."""
    letter_arrays = letters.arrays()
    tokenizer = questions.encoder.tokenizer
    answers: list[Answer] = []

    def dispatch(chunk: list[int], _: int) -> Any:
        return program(states, letter_arrays, *questions.batch(chunk))

    def finish(chunk: list[int], real: int, outputs: Any) -> None:
        tokens, lengths, letter = (np.asarray(x) for x in jax.device_get(outputs))
        for row, position in enumerate(chunk[:real]):
            question = questions.questions[position]
            text = tokenizer.decode(tokens[row, : lengths[row]].tolist(), skip_special_tokens=True)
            prediction = letters.letters[letter[row]] if letter[row] >= 0 else None
            answers.append(
                Answer(question, text.strip(), prediction, prediction == question.answer)
            )

    stats = run_pipelined(
        padded_chunks(range(len(questions.questions)), batch_size),
        dispatch,
        finish,
        total=len(questions.questions),
        unit="question",
        desc="understanding",
        show=show_progress,
    )
    return answers, stats
