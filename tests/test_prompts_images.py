"""Janus prompts (spec/janus.md §4.2, §5.1), special ids, the tiny tokenizer, and image
preprocessing (§4.1) against the original procedure computed here with PIL and torchvision."""

import numpy as np
import pytest
import torchvision.transforms.functional as TF
from PIL import Image
from tokenizers import Tokenizer, models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pairuni_jax.data import images, pipeline, prompts

SYS = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using natural "
    "language."
)


def test_understanding_prompt_matches_spec():
    expected = SYS + "\n\n<|User|>: <image_placeholder>\nWhat is shown?\n\n<|Assistant|>:"
    assert prompts.understanding_prompt("What is shown?") == expected
    # The content "<image_placeholder>\n" + question is stripped, so only trailing space goes.
    assert prompts.understanding_prompt("What is shown?\n ") == expected


def test_multi_turn_and_generation_prompts_match_spec():
    multi = prompts.render_chat(
        [
            ("<|User|>", "Hi"),
            ("<|Assistant|>", "Hello!"),
            ("<|User|>", "Bye"),
            ("<|Assistant|>", ""),
        ],
        SYS,
    )
    assert multi == (
        SYS + "\n\n<|User|>: Hi\n\n<|Assistant|>: Hello!<｜end▁of▁sentence｜>"
        "<|User|>: Bye\n\n<|Assistant|>:"
    )
    assert (
        prompts.generation_prompt("A red apple on a table.")
        == "<|User|>: A red apple on a table.\n\n<|Assistant|>:<begin_of_image>"
    )


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return prompts.load_tokenizer(pipeline.TINY_TOKENIZER)


def test_tiny_tokenizer_asset(tiny_tokenizer):
    auto = AutoTokenizer.from_pretrained(str(pipeline.TINY_TOKENIZER))
    assert len(auto) <= 1024
    for token in prompts.SPECIAL_TOKENS:
        assert auto.tokenize(token) == [token]
    text = "Three purple circles, 東京 café!"
    ids = auto.encode(text)
    assert ids[0] == auto.convert_tokens_to_ids(prompts.BOS)
    assert auto.decode(ids, skip_special_tokens=True) == text
    assert auto.pad_token == prompts.PAD and auto.eos_token == prompts.EOS


def test_special_ids_resolved_by_string(tiny_tokenizer):
    ids = prompts.SpecialIds.from_tokenizer(tiny_tokenizer)
    convert = tiny_tokenizer.convert_tokens_to_ids
    assert ids == prompts.SpecialIds(
        bos=convert(prompts.BOS),
        eos=convert(prompts.EOS),
        pad=convert(prompts.PAD),
        image=convert(prompts.IMAGE),
        begin_of_image=convert(prompts.BEGIN_OF_IMAGE),
        end_of_image=convert(prompts.END_OF_IMAGE),
    )


@pytest.mark.parametrize("num_image_tokens", [16, 576])
def test_understanding_ids_expand_the_image(tiny_tokenizer, num_image_tokens):
    encoder = prompts.PromptEncoder(tiny_tokenizer, num_image_tokens)
    question = "How many shapes?\nA. 1\nB. 2"
    ids = encoder.understanding_ids(question)
    plain = tiny_tokenizer.encode(prompts.understanding_prompt(question))
    at = plain.index(encoder.ids.image)
    expected = (
        plain[:at]
        + [encoder.ids.begin_of_image]
        + [encoder.ids.image] * num_image_tokens
        + [encoder.ids.end_of_image]
        + plain[at + 1 :]
    )
    assert ids.dtype == np.int32
    assert ids.tolist() == expected
    assert ids[0] == encoder.ids.bos and np.sum(ids == encoder.ids.bos) == 1


def test_generation_ids_end_with_begin_of_image(tiny_tokenizer):
    encoder = prompts.PromptEncoder(tiny_tokenizer, 16)
    ids = encoder.generation_ids("two red squares")
    assert ids.tolist() == tiny_tokenizer.encode(prompts.generation_prompt("two red squares"))
    assert ids[0] == encoder.ids.bos and ids[-1] == encoder.ids.begin_of_image


def test_tokenizer_without_special_tokens_is_rejected():
    plain = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=plain, unk_token="<unk>")
    with pytest.raises(ValueError, match="begin▁of▁sentence"):
        prompts.SpecialIds.from_tokenizer(tok)


def test_left_pad():
    ids, mask = prompts.left_pad(np.array([5, 6, 7], np.int32), 5, pad_id=2)
    assert ids.tolist() == [2, 2, 5, 6, 7] and mask.tolist() == [False, False, True, True, True]
    with pytest.raises(ValueError, match="do not fit"):
        prompts.left_pad(np.arange(6, dtype=np.int32), 5, pad_id=2)


def _original_preprocess(image: Image.Image, size: int) -> np.ndarray:
    """The Janus VLMImageProcessor steps, written out: torchvision resize of a PIL image,
    expand2square with (127, 127, 127), rescale 1/255 in float64, normalize 0.5/0.5 in float32."""
    image = image.convert("RGB")
    w, h = image.size
    m = max(w, h)
    out_size = [max(int(h / m * size), 14), max(int(w / m * size), 14)]
    image = TF.resize(image, out_size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    w, h = image.size
    if w != h:
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), (127, 127, 127))
        canvas.paste(image, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
        image = canvas
    chw = np.asarray(image).transpose(2, 0, 1)
    rescaled = (chw.astype(np.float64) * (1 / 255)).astype(np.float32)
    normalized = (rescaled - np.float32(0.5)) / np.float32(0.5)
    return normalized.transpose(1, 2, 0)  # the project is NHWC


@pytest.mark.parametrize(
    "width, height, size", [(100, 37, 48), (30, 77, 48), (300, 9, 64), (20, 20, 40)]
)
def test_preprocess_matches_original(width, height, size):
    rng = np.random.default_rng(width * height)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    got = images.preprocess_image(image, size)
    assert got.shape == (size, size, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, _original_preprocess(image, size))
    background = (np.float32(127 / 255) - np.float32(0.5)) / np.float32(0.5)
    if width > height:  # the top rows are padding
        assert np.allclose(got[0], background, atol=1e-6)
    elif height > width:  # the left columns are padding
        assert np.allclose(got[:, 0], background, atol=1e-6)


def test_load_converts_to_rgb(tmp_path):
    rgba = Image.new("RGBA", (40, 24), (200, 10, 30, 128))
    rgba.save(tmp_path / "a.png")
    Image.new("L", (24, 40), 90).save(tmp_path / "g.png")
    for name, mode in (("a.png", "RGBA"), ("g.png", "L")):
        original = Image.open(tmp_path / name)
        assert original.mode == mode
        got = images.load_and_preprocess(tmp_path / name, 32)
        np.testing.assert_array_equal(got, _original_preprocess(original, 32))
