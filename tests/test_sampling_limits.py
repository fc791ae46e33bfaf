"""``pairuni generate`` / ``answer`` refuse what would sample garbage: prompts and new tokens past
the model's positions, and sampling numbers that are NaN, infinite or out of range."""

import numpy as np
import pytest
from PIL import Image

from tests.test_generate_answer_cli import _run, tiny_dir  # noqa: F401  (the fixture)


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    return path


def _generate(directory, tmp_path, *flags, prompt="A red circle."):
    argv = ["generate", "--model", str(directory), "--prompt", prompt, "--out", str(tmp_path / "o")]
    return _run([*argv, *flags])


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--cfg", "nan"], "cfg_weight must be finite and >= 0"),
        (["--cfg", "-1"], "cfg_weight must be finite and >= 0"),
        (["--temperature", "inf"], "temperature must be finite and > 0"),
    ],
)
def test_generate_refuses_bad_sampling_numbers(tiny_dir, tmp_path, capsys, flags, message):  # noqa: F811
    assert _generate(tiny_dir[0], tmp_path, *flags) == 2
    assert message in capsys.readouterr().out
    assert not (tmp_path / "o").exists()


def test_generate_refuses_a_prompt_beyond_the_positions(tiny_dir, tmp_path, capsys):  # noqa: F811
    directory, model, _ = tiny_dir
    limit = model.config.text.max_position_embeddings
    assert _generate(directory, tmp_path, prompt="a red circle " * 3000) == 2
    out = capsys.readouterr().out
    assert f"more than the model's {limit} positions" in out and "--prompt" in out
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--max-new-tokens", "5000"], "--question + --max-new-tokens: "),
        (["--top-p", "nan"], "top_p must be in (0, 1]"),
    ],
)
def test_answer_refuses_bad_lengths_and_numbers(tiny_dir, picture, capsys, flags, message):  # noqa: F811
    argv = ["answer", "--model", str(tiny_dir[0]), "--image", str(picture), "--question", "Why?"]
    assert _run([*argv, *flags]) == 2
    assert message in capsys.readouterr().out
