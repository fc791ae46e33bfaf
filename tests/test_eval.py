"""``pairuni eval`` end to end on a tiny model: understanding predictions against ``pairuni answer
--greedy``, a VLMEvalKit TSV against the same questions as JSONL, HPS against scoring the saved
images directly, reproducibility, and named errors for bad input."""

import base64
import dataclasses
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image

from convert import hpsv2 as convert_hpsv2
from pairuni_jax import cli
from pairuni_jax.checkpoint import model_dir
from pairuni_jax.data import prompts
from pairuni_jax.data.images import load_and_preprocess
from pairuni_jax.evaluation import InputError, read_prompts, read_questions
from pairuni_jax.models.janus import Janus, JanusConfig
from pairuni_jax.rewards import clip_text
from pairuni_jax.rewards.accuracy import OptionLetterTable, accuracy_reward
from pairuni_jax.rewards.hps import hps_score, load_reward_model
from pairuni_jax.rollout import text as text_rollout
from tests.clip_reference import tiny_open_clip
from tests.test_generate_answer_cli import TOKENIZER, _random_params

INSTRUCTION = "Answer with the option's letter from the given choices directly."
# One question text (so that `pairuni answer` compiles once), three images, three answers.
QUESTION, OPTIONS, HINT = "Which colour fills it?", ["red", "green", "blue", "white"], "Look."
QUESTION_TEXT = f"Hint: {HINT}\n{QUESTION}\nA. red\nB. green\nC. blue\nD. white\n\n{INSTRUCTION}"
ANSWERS, TAGS, IMAGE_OF = "BAC", ("colour", "shape", "colour"), (0, 1, 0)
PROMPTS = [("a red circle", "colour"), ("a blue square", "shape"), ("a green star", "colour")]
NEW_TOKENS = 6
IMAGES_PER_PROMPT = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Janus saved with the tiny tokenizer; the output weights of the letter
    tokens " A" ... " D" are drawn larger and the image features amplified, so that greedy
    answers name letters, and different ones for different images."""
    tokenizer = prompts.load_tokenizer(TOKENIZER)
    ids = prompts.SpecialIds.from_tokenizer(tokenizer)
    config = dataclasses.replace(JanusConfig.tiny(), image_token_id=ids.image)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Janus(config, rngs=nnx.Rngs(0))))
    params = _random_params(nnx.to_pure_dict(state))
    letters = [tokenizer.encode(f" {c}", add_special_tokens=False)[0] for c in "ABCD"]
    kernel = params["lm_head"]["kernel"]
    kernel[:, letters] = np.random.default_rng(2).normal(0, 3, (kernel.shape[0], 4))
    params["aligner"] = jax.tree.map(lambda x: x * 20.0, params["aligner"])
    params["generation_head"]["vision_head"]["kernel"] *= 30.0
    directory = tmp_path_factory.mktemp("model") / "tiny"
    meta = {"kind": "janus", "janus": config.to_dict(), "dtype": "float32"}
    model_dir.save_model_dir(directory, params, meta, files=sorted(TOKENIZER.iterdir()))
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    return directory, nnx.merge(graphdef, state), prompts.PromptEncoder(tokenizer, 16)


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    """A tiny HPS reward directory, made as a user makes one: open_clip weights converted."""
    path = tmp_path_factory.mktemp("hps_src") / "HPS_tiny.pt"
    torch.save({"state_dict": tiny_open_clip(seed=4).state_dict()}, path)
    dst = tmp_path_factory.mktemp("hps") / "reward"
    assert convert_hpsv2.main([str(path), str(dst), "--preset", "tiny"]) == 0
    return dst


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The questions as pair-format JSONL and as a VLMEvalKit TSV (base64 PNGs; the last row
    names the first row's image by its index), and the prompts as JSONL."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    pngs = []
    for i in range(2):
        pixels = rng.integers(0, 256, size=(18 + 6 * i, 30, 3), dtype=np.uint8)
        pixels[: 3 * i] = 40 * i  # a different band per image
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
        (root / f"img{i}.png").write_bytes(buffer.getvalue())
    lines, rows = [], ["index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage"]
    for n, (answer, tag, image) in enumerate(zip(ANSWERS, TAGS, IMAGE_OF)):
        record = {"image_path": f"img{image}.png", "question": QUESTION_TEXT, "answer": answer}
        lines.append(json.dumps({**record, "tag": tag, "id": str(100 + n)}))
        cell = "100" if n == 2 else base64.b64encode(pngs[image]).decode()
        rows.append("\t".join([str(100 + n), QUESTION, HINT, *OPTIONS, answer, tag, cell]))
    (root / "questions.jsonl").write_text("\n".join(lines) + "\n")
    (root / "questions.tsv").write_text("\n".join(rows) + "\n")
    prompt_lines = [json.dumps({"prompt": p, "tag": t}) for p, t in PROMPTS]
    (root / "prompts.jsonl").write_text("\n".join(prompt_lines) + "\n")
    return root


def _eval(tiny, out, *extra):
    directory, _, _ = tiny
    argv = ["eval", "--model", str(directory), "--out", str(out), "--batch-size", "4"]
    return cli.main([*argv, "--max-new-tokens", str(NEW_TOKENS), *extra])


GENERATION = ("--images-per-prompt", str(IMAGES_PER_PROMPT))


@pytest.fixture(scope="module")
def evaluated(tiny, inputs, reward_dir, tmp_path_factory):
    """One ``pairuni eval`` of the JSONL questions and the prompts, with HPS (batches of 4:
    one of 3 questions and a padding row; 2 prompts x 2 images, the second batch padded)."""
    out = tmp_path_factory.mktemp("eval") / "out"
    understanding = ("--understanding", str(inputs / "questions.jsonl"))
    generation = ("--generation", str(inputs / "prompts.jsonl"), "--reward", str(reward_dir))
    assert _eval(tiny, out, *understanding, *generation, *GENERATION) == 0
    predictions = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    return out, json.loads((out / "report.json").read_text()), predictions


def test_predictions_are_what_answer_greedy_prints(tiny, inputs, evaluated, capsys):
    directory, model, encoder = tiny
    _, report, predictions = evaluated
    capsys.readouterr()
    table = OptionLetterTable.from_tokenizer(encoder.tokenizer, vocab_size=1024).arrays().table
    settings = text_rollout.TextSettings(
        eos_id=encoder.ids.eos, pad_id=encoder.ids.pad, max_new_tokens=NEW_TOKENS, greedy=True
    )
    ids = jnp.asarray(encoder.understanding_ids(QUESTION_TEXT)[None])
    for n, (answer, image) in enumerate(zip(ANSWERS, IMAGE_OF)):
        path = inputs / f"img{image}.png"
        argv = ["answer", "--model", str(directory), "--image", str(path)]
        argv += ["--question", QUESTION_TEXT, "--max-new-tokens", str(NEW_TOKENS), "--greedy"]
        assert cli.main(argv) == 0
        assert predictions[n]["output"] == capsys.readouterr().out.strip()
        # The letter is the accuracy reward's reading of the same greedy tokens.
        pixels = jnp.asarray(load_and_preprocess(path, model.config.vision.image_size)[None])
        mask = jnp.ones(ids.shape, bool)
        rollout = text_rollout.sample_text_jit(
            model, ids, mask, pixels, ids == encoder.ids.image, jax.random.key(0), settings
        )
        rewards = [
            float(accuracy_reward(table, rollout.tokens, rollout.mask, jnp.array([i]))[0])
            for i in range(4)
        ]
        want = "ABCD"[rewards.index(1.0)] if 1.0 in rewards else None
        assert predictions[n]["prediction"] == want
        assert predictions[n]["correct"] == (want == answer)
        assert predictions[n]["id"] == str(100 + n) and predictions[n]["line"] == n + 1
    assert len({p["prediction"] for p in predictions}) >= 2, "the fixture should vary its answers"


def test_report_accuracy_is_the_mean_verdict_and_tags_add_up(evaluated):
    _, report, predictions = evaluated
    und = report["understanding"]
    verdicts = [p["correct"] for p in predictions]
    assert und["count"] == len(ANSWERS) == len(predictions)
    assert und["accuracy"] == pytest.approx(np.mean(verdicts))
    no_letter = np.mean([p["prediction"] is None for p in predictions])
    assert und["no_letter"] == pytest.approx(no_letter)
    by_tag = und["by_tag"]
    assert sorted(by_tag) == ["colour", "shape"]
    assert sum(t["count"] for t in by_tag.values()) == und["count"]
    assert sum(t["correct"] for t in by_tag.values()) == sum(verdicts)
    for tag, stats in by_tag.items():
        mine = [p["correct"] for p in predictions if p["tag"] == tag]
        assert stats["accuracy"] == pytest.approx(np.mean(mine))
    assert report["model"] and report["step"] is None
    assert report["settings"]["max_new_tokens"] == NEW_TOKENS


def test_tsv_is_read_and_scored_like_the_same_questions(tiny, inputs, evaluated, tmp_path):
    _, _, from_jsonl = evaluated
    questions, _ = read_questions(inputs / "questions.tsv")
    assert [q.question for q in questions] == [QUESTION_TEXT] * len(ANSWERS)
    images = [(inputs / f"img{i}.png").read_bytes() for i in IMAGE_OF]
    assert [q.image for q in questions] == images  # the last row names row 100's image
    assert [q.tag for q in questions] == list(TAGS)
    assert _eval(tiny, tmp_path / "out", "--understanding", str(inputs / "questions.tsv")) == 0
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    from_tsv = [json.loads(x) for x in lines]
    assert [p["id"] for p in from_tsv] == [str(100 + n) for n in range(len(ANSWERS))]
    assert [p["tag"] for p in from_tsv] == list(TAGS)
    keys = ("output", "prediction", "answer", "correct")
    assert [{k: p[k] for k in keys} for p in from_tsv] == [
        {k: p[k] for k in keys} for p in from_jsonl
    ]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sorted(report["understanding"]["by_tag"]) == ["colour", "shape"]


def test_generation_writes_k_images_with_their_hps(evaluated, reward_dir):
    out, report, _ = evaluated
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == len(PROMPTS) * IMAGES_PER_PROMPT
    for p, (prompt, tag) in enumerate(PROMPTS):
        mine = [r for r in rows if r["prompt_id"] == p]
        assert [r["image"] for r in mine] == [f"images/{p:05d}_{k}.png" for k in range(2)]
        assert {(r["prompt"], r["tag"]) for r in mine} == {(prompt, tag)}
    images = np.stack([np.asarray(Image.open(out / r["image"])) for r in rows])
    assert images.shape[1:] == (32, 32, 3)
    assert all(np.any(a != b) for a, b in zip(images[::2], images[1::2]))  # K samples differ
    # Score the saved PNGs with the reward directly; u8 -> the centre of its level in [-1, 1].
    hps_model = load_reward_model(reward_dir)
    ids = clip_text.clip_token_ids(
        clip_text.load_clip_tokenizer(reward_dir), [r["prompt"] for r in rows]
    )
    pixels = (images.astype(np.float32) + 0.5) / 127.5 - 1.0
    want = np.asarray(jax.jit(hps_score)(hps_model, pixels, text_ids=ids))
    np.testing.assert_allclose([r["hps"] for r in rows], want, rtol=0, atol=2e-6)
    gen = report["generation"]
    assert gen["count"] == len(rows) and gen["prompts"] == len(PROMPTS)
    assert gen["hps_mean"] == pytest.approx(want.mean(), abs=2e-6)
    assert gen["hps_std"] == pytest.approx(want.std(), abs=2e-6)
    colour = [r["hps"] for r in rows if r["tag"] == "colour"]
    assert gen["by_tag"]["colour"]["count"] == len(colour) == 4
    assert gen["by_tag"]["colour"]["hps_mean"] == pytest.approx(np.mean(colour))
    assert (out / "grid.png").is_file()


def test_same_model_and_seed_give_the_same_report(tiny, inputs, reward_dir, evaluated, capsys):
    out, report, _ = evaluated
    understanding = ("--understanding", str(inputs / "questions.jsonl"))
    generation = ("--generation", str(inputs / "prompts.jsonl"), "--reward", str(reward_dir))
    argv = (*understanding, *generation, *GENERATION)
    assert _eval(tiny, out, *argv) == 2  # an earlier evaluation is not overwritten silently
    assert "--overwrite" in capsys.readouterr().out
    before = (out / "images" / "00001_1.png").read_bytes()
    assert _eval(tiny, out, *argv, "--overwrite") == 0
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "images" / "00001_1.png").read_bytes() == before
    assert "questions/s" in capsys.readouterr().out


# -- bad input -----------------------------------------------------------------------------------


def _tsv(path, header, *rows):
    path.write_text("\n".join(["\t".join(header), *("\t".join(r) for r in rows)]) + "\n")
    return path


def _png_b64():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_bad_input_is_named_with_file_line_and_column(tmp_path):
    header = ["index", "question", "A", "B", "C", "D", "answer", "category", "image"]
    good = ["1", "Which?", "x", "y", "z", "w", "B", "cat", _png_b64()]
    missing = _tsv(
        tmp_path / "missing.tsv", [h for h in header if h != "answer"], good[:6] + good[7:]
    )
    with pytest.raises(InputError, match=r"missing.tsv:1: answer: the header has no column answer"):
        read_questions(missing)
    letter = _tsv(tmp_path / "letter.tsv", header, good, [*good[:6], "E", *good[7:]])
    with pytest.raises(
        InputError, match=r"letter.tsv:3: answer: 'E' is not one of .*\[answer_not_an_option\]"
    ):
        read_questions(letter)
    unreadable = _tsv(
        tmp_path / "image.tsv", header, [*good[:8], base64.b64encode(b"not a png" * 20).decode()]
    )
    with pytest.raises(InputError, match=r"image.tsv:2: image: cannot read .*\[unreadable_image\]"):
        read_questions(unreadable)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    question = f"Which?\nA. x\nB. y\n\n{INSTRUCTION}"
    record = {"image_path": "broken.png", "question": question, "answer": "A"}
    (tmp_path / "q.jsonl").write_text("\n" + json.dumps(record) + "\n")
    with pytest.raises(InputError, match=r"q.jsonl:2: image_path: cannot read .*broken.png"):
        read_questions(tmp_path / "q.jsonl")
    (tmp_path / "q.jsonl").write_text(json.dumps({**record, "answer": "F"}) + "\n")
    with pytest.raises(InputError, match=r"q.jsonl:1: answer: 'F' is not one of the question's"):
        read_questions(tmp_path / "q.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match=r"empty.jsonl: no questions"):
        read_questions(tmp_path / "empty.jsonl")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match=r"empty.txt: no prompts"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(ValueError, match=r"empty.tsv: no questions"):
        read_questions(tmp_path / "empty.tsv")


def test_skip_mode_counts_what_it_left_out(tmp_path):
    header = ["index", "question", "A", "B", "C", "D", "answer", "category", "image"]
    good = ["1", "Which?", "x", "y", "", "", "B", "cat", _png_b64()]
    path = _tsv(tmp_path / "q.tsv", header, good, [*good[:6], "C", *good[7:]], ["3", *good[1:]])
    questions, issues = read_questions(path, on_error="skip")
    assert [q.id for q in questions] == ["1", "3"] and questions[0].options == ("A", "B")
    assert questions[0].question == f"Which?\nA. x\nB. y\n\n{INSTRUCTION}"  # no hint line
    assert len(issues) == 1 and issues[0].line == 3


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    (tmp_path / "q.jsonl").write_text('{"question": 3}\n')
    argv = ["eval", "--model", str(tmp_path), "--understanding", str(tmp_path / "q.jsonl")]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    out = capsys.readouterr().out
    assert out.startswith("error: ") and "q.jsonl:1: image_path: required field is missing" in out
    assert cli.main(["eval", "--out", str(tmp_path / "o"), "--understanding", "x.jsonl"]) == 2
    assert "exactly one of --model" in capsys.readouterr().out
    argv = ["eval", "--model", str(tmp_path), "--generation", "p.txt", "--temperature", "0"]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "temperature must be finite and > 0, got 0.0" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
