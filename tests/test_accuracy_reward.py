"""Accuracy and format rewards from token ids, on completions tokenised by a real Hugging Face
byte-level BPE tokenizer trained here (the Janus / DeepSeek tokenizer family)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pairuni_jax.rewards import registry
from pairuni_jax.rewards.accuracy import (
    NEUTRAL,
    OTHER,
    OptionLetterTable,
    accuracy_reward,
    classify_token,
    format_reward,
)

CORPUS = [
    "A",
    " A",
    "A.",
    "(A)",
    "A)",
    "B",
    " B",
    "B.",
    "(B)",
    "C",
    " C",
    "C.",
    "(C)",
    "D.",
    " D",
    "The answer is B. Because the coat has stripes.",
    "Answer with the option's letter from the given choices directly.",
    "<think>The animal has stripes, so A is wrong.</think>\n<answer>B</answer>",
    "<think>Count the cats: there are three.</think> <answer> C </answer>",
    "What type of pattern dominates the animals' coats? Stripes, polka dots, solid gray.",
    "an apple a day, Apple Banana Cherry Dog",
]
PAD = 64


@pytest.fixture(scope="module")
def tokenizer():
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS * 50, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>")


@pytest.fixture(scope="module")
def letters_only(tokenizer):
    return OptionLetterTable.from_tokenizer(tokenizer, letters="ABCD", vocab_size=512)


@pytest.fixture(scope="module")
def tagged(tokenizer):
    return OptionLetterTable.from_tokenizer(
        tokenizer, letters="ABCD", answer_tag=("<answer>", "</answer>")
    )


def batch(tokenizer, texts):
    """Completion ids [B, PAD] (text + EOS, then padding made of "A" tokens that the mask hides)."""
    filler = tokenizer.convert_tokens_to_ids("A")
    ids = np.full((len(texts), PAD), filler, np.int32)
    mask = np.zeros((len(texts), PAD), bool)
    for row, text in enumerate(texts):
        tokens = [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = True
    return jnp.asarray(ids), jnp.asarray(mask)


def test_tokens_with_letters_are_in_the_vocabulary(tokenizer):
    vocab = tokenizer.get_vocab()
    assert {"ĠB", "(", "B", "<", "answer"} <= set(vocab), sorted(vocab)[:80]


def test_classify_token():
    assert [classify_token(t, "ABCD") for t in ["A", " B", "C.", "(D)", "**A**", "A)\n"]] == [
        0,
        1,
        2,
        3,
        0,
        0,
    ]
    assert [classify_token(t, "ABCD") for t in ["", " ", "\n\n", "(", "**", ".", "</"]] == [
        NEUTRAL
    ] * 7
    assert [classify_token(t, "ABCD") for t in ["a", " E", "Apple", "1", "A B", "\ufffd"]] == [
        OTHER
    ] * 6


def test_table_from_tokenizer(tokenizer, letters_only):
    table = letters_only.table
    assert table.shape == (512, 2) and table.dtype == np.int32
    classes, joins = table[:, 0], table[:, 1]
    vocab = tokenizer.get_vocab()
    assert classes[vocab["ĠB"]] == 1 and classes[vocab["C"]] == 2
    assert classes[vocab["<eos>"]] == NEUTRAL and classes[vocab["Ġ"]] == NEUTRAL
    assert classes[len(tokenizer) :].tolist() == [OTHER] * (512 - len(tokenizer))
    assert joins[vocab["ecau"]] == 1 and joins[vocab["Ġis"]] == 0 and joins[vocab["."]] == 0
    assert letters_only.letter_index("B") == 1 and letters_only.letter_index(" D ") == 3
    with pytest.raises(ValueError, match="not one of the option letters"):
        letters_only.letter_index("E")
    with pytest.raises(ValueError, match="distinct"):
        OptionLetterTable.from_tokenizer(tokenizer, letters="AAB")


CASES = [  # (completion, answer letter, accuracy, format)
    ("B", "B", 1, 1),
    (" B", "B", 1, 1),
    ("B.", "B", 1, 1),
    ("(B)", "B", 1, 1),
    ("\n\n**B**.", "B", 1, 1),
    ("B. Because the coat has stripes.", "B", 1, 0),
    ("C", "B", 0, 1),
    ("The answer is B.", "B", 0, 0),
    ("Because", "B", 0, 0),
    ("Bxyz", "B", 0, 0),
    ("b", "B", 0, 0),
    ("an apple a day", "A", 0, 0),
    ("", "A", 0, 0),
    ("...", "A", 0, 0),
]


def test_accuracy_and_format_without_tags(tokenizer, letters_only):
    texts, letters, want_acc, want_fmt = zip(*CASES, strict=True)
    ids, mask = batch(tokenizer, texts)
    answer = jnp.asarray([letters_only.letter_index(c) for c in letters], jnp.int32)
    table = letters_only.arrays().table
    acc = jax.jit(accuracy_reward)(table, ids, mask, answer)
    fmt = jax.jit(format_reward)(table, ids, mask)
    assert acc.dtype == jnp.float32 and acc.shape == (len(CASES),)
    assert acc.tolist() == list(want_acc)
    assert fmt.tolist() == list(want_fmt)


TAG_CASES = [
    ("<think>The animal has stripes, so A is wrong.</think>\n<answer>B</answer>", "B", 1, 1),
    ("<think>Count the cats.</think> <answer> C </answer>", "C", 1, 1),
    ("<answer>(D)</answer>", "D", 1, 1),
    ("<answer>B. Because</answer>", "B", 1, 0),
    ("<answer>B", "B", 1, 0),
    ("<answer></answer> B", "B", 0, 0),
    ("<think>A is right</think>", "A", 0, 0),
    ("B", "B", 0, 0),
    ("<answer>C</answer>", "B", 0, 1),
]


def test_accuracy_and_format_with_answer_tags(tokenizer, tagged):
    texts, letters, want_acc, want_fmt = zip(*TAG_CASES, strict=True)
    ids, mask = batch(tokenizer, texts)
    answer = jnp.asarray([tagged.letter_index(c) for c in letters], jnp.int32)
    arrays = tagged.arrays()
    acc = jax.jit(accuracy_reward)(arrays.table, ids, mask, answer, open_tag=arrays.open_tag)
    fmt = jax.jit(format_reward)(
        arrays.table, ids, mask, open_tag=arrays.open_tag, close_tag=arrays.close_tag
    )
    assert acc.tolist() == list(want_acc)
    assert fmt.tolist() == list(want_fmt)
    with pytest.raises(ValueError, match="both"):
        format_reward(arrays.table, ids, mask, open_tag=arrays.open_tag)


def test_tag_patterns_cover_merges_with_neighbours(tokenizer, tagged):
    for text in ("<answer>B", "x <answer>B", "x\n<answer>B", "</think><answer>B", "x.<answer>B"):
        ids, mask = batch(tokenizer, [text])
        got = accuracy_reward(
            tagged.arrays().table, ids, mask, jnp.asarray([1]), open_tag=tagged.arrays().open_tag
        )
        assert got.tolist() == [1.0], (text, tokenizer.tokenize(text))


def test_registry_weights_and_names(tokenizer, tagged):
    ids, mask = batch(tokenizer, ["<answer>B</answer>", "<answer>B. Because</answer>", "C"])
    inputs = registry.UnderstandingInputs(ids, mask, jnp.asarray([1, 1, 1]), tagged.arrays())
    weights = registry.RewardWeights(understanding={"accuracy": 1.0, "format": 0.5})
    total, parts = jax.jit(lambda x: registry.understanding_reward(weights, x))(inputs)
    assert parts["accuracy"].tolist() == [1, 1, 0] and parts["format"].tolist() == [1, 0, 0]
    assert total.tolist() == [1.5, 1.0, 0.0]
    default = registry.RewardWeights()
    assert dict(default.understanding) == {"accuracy": 1.0, "format": 0.0}
    with pytest.raises(ValueError, match=r"unknown rewards \['acc'\]"):
        registry.RewardWeights(understanding={"acc": 1.0})
    with pytest.raises(ValueError, match="at least one"):
        registry.RewardWeights(generation={})
