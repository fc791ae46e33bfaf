"""A tokenizer that does not add BOS itself (a ``PreTrainedTokenizerFast`` without a template
post-processor, as a user's own saved tokenizer can be): every place that builds Janus prompts
(the prompt encoder, the trainer's data pipeline, ``pairuni generate`` / ``answer``) puts BOS
first, exactly once, giving the same ids as the Janus tokenizer, which adds it itself."""

import json
import shutil

import numpy as np
import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from pairuni_jax.data import pipeline, prompts
from tests.test_data_pipeline import _clip_tokenizer
from tests.test_generate_answer_cli import _run, tiny_dir  # noqa: F401 (a fixture)

QUESTION, PROMPT = "What colour is the square?", "two red squares"


@pytest.fixture(scope="module")
def no_bos_dir(tmp_path_factory):
    """The bundled tiny tokenizer re-saved the way a user builds one from a tokenizer.json:
    ``PreTrainedTokenizerFast`` with the special tokens named and no post-processor."""
    data = json.loads((pipeline.TINY_TOKENIZER / "tokenizer.json").read_text())
    data["post_processor"] = None
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token=prompts.BOS,
        eos_token=prompts.EOS,
        pad_token=prompts.PAD,
        additional_special_tokens=[prompts.IMAGE, prompts.BEGIN_OF_IMAGE, prompts.END_OF_IMAGE],
    )
    directory = tmp_path_factory.mktemp("tokenizer") / "no_bos"
    tokenizer.save_pretrained(directory)
    return directory


def test_the_user_tokenizer_really_adds_no_bos(no_bos_dir):
    tokenizer = prompts.load_tokenizer(no_bos_dir)
    bos = tokenizer.convert_tokens_to_ids(prompts.BOS)
    assert tokenizer.encode("hello")[:1] != [bos]
    assert prompts.load_tokenizer(pipeline.TINY_TOKENIZER).encode("hello")[:1] == [bos]


def test_prompt_ids_start_with_one_bos_either_way(no_bos_dir):
    user = prompts.PromptEncoder(prompts.load_tokenizer(no_bos_dir), 16)
    janus = prompts.PromptEncoder(prompts.load_tokenizer(pipeline.TINY_TOKENIZER), 16)
    for encoder in (user, janus):
        for ids in (encoder.understanding_ids(QUESTION), encoder.generation_ids(PROMPT)):
            assert ids[0] == encoder.ids.bos and np.sum(ids == encoder.ids.bos) == 1
    np.testing.assert_array_equal(
        user.understanding_ids(QUESTION), janus.understanding_ids(QUESTION)
    )
    np.testing.assert_array_equal(user.generation_ids(PROMPT), janus.generation_ids(PROMPT))


def test_trainer_pipeline_batches_match(no_bos_dir):
    config = pipeline.DataConfig.demo(pairs_per_host=2, num_epochs=1, read_threads=1)
    clip = _clip_tokenizer()
    want = next(pipeline.PairPipeline(config, pipeline.TINY_TOKENIZER, clip).iterator())
    got = next(pipeline.PairPipeline(config, no_bos_dir, clip).iterator())
    for key in ("und_input_ids", "und_attention_mask", "gen_input_ids", "gen_attention_mask"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_generate_and_answer_work_with_it(tiny_dir, no_bos_dir, tmp_path, capsys):  # noqa: F811
    directory, _, _ = tiny_dir
    user_dir = tmp_path / "model"
    shutil.copytree(directory, user_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(no_bos_dir / name, user_dir / name)
    picture = tmp_path / "square.png"
    from PIL import Image

    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(picture)
    outputs = []
    for model in (directory, user_dir):
        answer = ["answer", "--model", str(model), "--image", str(picture), "--question", QUESTION]
        assert _run([*answer, "--max-new-tokens", "6", "--greedy"]) == 0
        out = tmp_path / f"images_{len(outputs)}"
        generate = ["generate", "--model", str(model), "--prompt", PROMPT, "--n", "1"]
        assert _run([*generate, "--out", str(out)]) == 0
        answer_line = capsys.readouterr().out.strip().splitlines()[0]
        outputs.append((answer_line, np.asarray(Image.open(out / "000.png"))))
    assert outputs[0][0] == outputs[1][0]
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
