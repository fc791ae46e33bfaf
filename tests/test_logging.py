"""Logging outputs: event files read back by TensorBoard's own loader, CRC-32C vectors, the
metrics JSONL (and its resume trimming), the non-lead no-op, image grids and answer files."""

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pairuni_jax.logging import (
    MetricsWriter,
    TensorBoardWriter,
    WandbConfig,
    format_line,
    image_grid,
    save_answers,
    save_image_grid,
)


def _accumulator(logdir):
    """TensorBoard's own reader over ``logdir`` (it checks every record's CRCs)."""
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    acc = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0}
    )
    return acc.Reload()


def _scalar_points(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_writer_read_back_by_tensorboard(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), np.uint8)
    writer = TensorBoardWriter(tmp_path)
    writer.scalars(0, {"loss": 1.5, "reward/mean": -0.25})
    writer.scalars(7, {"loss": 0.125, "reward/mean": 3e-5})
    writer.image(7, "samples", image)
    writer.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1

    acc = _accumulator(tmp_path)
    assert _scalar_points(acc, "loss") == [(0, 1.5), (7, 0.125)]
    assert _scalar_points(acc, "reward/mean") == [(0, -0.25), (7, np.float32(3e-5))]
    (event,) = acc.Images("samples")
    assert (event.step, event.height, event.width) == (7, 20, 30)
    decoded = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
    np.testing.assert_array_equal(decoded, image)


def test_tensorboard_writer_rejects_bad_image(tmp_path):
    writer = TensorBoardWriter(tmp_path)
    with pytest.raises(ValueError, match="'bad'.*float32"):
        writer.image(0, "bad", np.zeros((4, 4, 3), np.float32))
    writer.close()


def test_metrics_writer_jsonl_and_tensorboard(tmp_path):
    import jax.numpy as jnp

    with MetricsWriter(tmp_path) as writer:
        writer.write(1, {"loss": jnp.float32(0.5), "und/reward_mean": np.float64(0.25)})
        writer.write(2, {"loss": 0.75, "und/reward_mean": float("nan")})
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(d["step"], d["loss"]) for d in lines] == [(1, 0.5), (2, 0.75)]
    assert lines[0]["und/reward_mean"] == 0.25 and np.isnan(lines[1]["und/reward_mean"])
    assert set(lines[0]) == {"step", "time", "loss", "und/reward_mean"}
    assert lines[0]["time"] <= lines[1]["time"]
    acc = _accumulator(tmp_path / "tensorboard")
    assert _scalar_points(acc, "loss") == [(1, 0.5), (2, 0.75)]


def test_metrics_writer_rejects_non_scalars(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        with pytest.raises(ValueError, match="'hist'.*shape"):
            writer.write(1, {"hist": np.zeros(3)})
        with pytest.raises(ValueError, match="'step'.*reserved"):
            writer.write(1, {"step": 1.0})
    assert not (tmp_path / "tensorboard").exists()


def test_resumed_metrics_writer_logs_each_step_once(tmp_path):
    with MetricsWriter(tmp_path) as first:
        for step in range(1, 6):
            first.write(step, {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # torn by the kill
    with MetricsWriter(tmp_path, start_step=4) as resumed:  # last checkpoint at step 3
        for step in range(4, 7):
            resumed.write(step, {"loss": 10.0 * step})
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    expected = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]
    assert [(d["step"], d["loss"]) for d in lines] == expected
    assert _scalar_points(_accumulator(tmp_path / "tensorboard"), "loss") == expected


@pytest.mark.parametrize(
    "bad,message",
    [
        ("not json\n", "metrics.jsonl:2: not a JSON line"),
        ('{"loss": 1}\n', "metrics.jsonl:2: not a"),
    ],
)
def test_a_resume_names_a_broken_metrics_line_and_keeps_the_file(bad, message, tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n' + bad + '{"step": 3, "loss": 3.0}\n')
    before = path.read_bytes()
    with pytest.raises(ValueError, match=message):
        MetricsWriter(tmp_path, tensorboard=False, start_step=2)
    assert path.read_bytes() == before


def test_non_lead_metrics_writer_writes_nothing(tmp_path):
    writer = MetricsWriter(tmp_path / "run", is_lead=False)
    writer.write(1, {"loss": 1.0})
    writer.image(1, "samples", np.zeros((8, 8, 3), np.uint8))
    writer.close()
    assert not (tmp_path / "run").exists()


def test_format_line_aligns_chosen_keys():
    keys = ["loss", "und/reward_mean", "missing"]
    first = format_line(3, {"loss": -0.0123456, "und/reward_mean": 0.5, "other": 1.0}, keys)
    second = format_line(1234, {"loss": 12345.678, "und/reward_mean": 1e-7}, keys)
    assert first == "step      3  loss   -0.01235  und/reward_mean        0.5  missing          -"
    assert second == "step   1234  loss  1.235e+04  und/reward_mean      1e-07  missing          -"
    assert "other" not in first


def test_image_grid_upscales_and_captions_change_pixels(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), np.uint8)
    blank = image_grid(images, [""] * 5)
    captioned = save_image_grid(
        tmp_path / "samples" / "grid.png",
        images,
        [f"a red square on a blue background, reward {0.1 * i:.4f}" for i in range(5)],
    )
    # 32 px -> 128 px tiles in a 3 x 2 grid, 4 px padding, two caption lines on the captioned one
    assert blank.shape[1] == captioned.shape[1] == 3 * (128 + 4) + 4
    assert captioned.shape[0] > blank.shape[0] >= 2 * (128 + 4) + 4
    np.testing.assert_array_equal(captioned[4:132, 4:132], images[0].repeat(4, 0).repeat(4, 1))
    caption_strip = captioned[132 : 132 + 10, 4:132]
    assert (caption_strip < 128).any() and (caption_strip == 255).any()
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "samples" / "grid.png")), captioned
    )


def test_image_grid_wraps_long_words_and_checks_captions():
    images = np.zeros((1, 128, 128, 3), np.uint8)
    one_line = image_grid(images, ["x"])
    long_word = image_grid(images, ["y" * 200])
    assert long_word.shape[0] > one_line.shape[0] + 3 * (one_line.shape[0] - 128 - 8)
    assert long_word.shape[1] == one_line.shape[1] == 128 + 8
    with pytest.raises(ValueError, match="captions: expected one per image"):
        image_grid(images, ["a", "b"])
    with pytest.raises(ValueError, match="images: expected uint8"):
        image_grid(images[0], ["a"])


def test_save_answers(tmp_path):
    path = tmp_path / "samples" / "answers_000010.txt"
    save_answers(
        path,
        [
            {
                "question": "What colour is the square?\nA. red\nB. blue",
                "answer": "<answer> B",
                "reward": 1.0,
            },
            {"question": "How many circles?", "answer": "three", "reward": np.float32(0.123456)},
        ],
    )
    assert path.read_text() == (
        "# 1\nquestion: What colour is the square?\n    A. red\n    B. blue\n"
        "answer: <answer> B\nreward: 1\n\n"
        "# 2\nquestion: How many circles?\nanswer: three\nreward: 0.1235\n"
    )


def _wandb_records(path: Path, expected: bytes, timeout_s: float = 30.0) -> bytes:
    """The run's transaction log once it holds ``expected``: wandb-core's writer may still be
    appending to it after ``finish()`` returns (seen under load: only the 7-byte header)."""
    deadline = time.monotonic() + timeout_s
    while expected not in (data := path.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return data


def test_wandb_offline_run_gets_scalars_and_images(tmp_path):
    """``logging.wandb`` with ``mode: offline``: no network, the run is written under
    RUN_DIR/wandb, and a resumed writer continues the same W&B run id."""
    settings = WandbConfig(project="pairuni-test", mode="offline")
    grid = np.random.default_rng(1).integers(0, 256, (16, 24, 3), np.uint8)
    with MetricsWriter(tmp_path, tensorboard=False, wandb=settings, config={"steps": 3}) as w:
        w.write(1, {"und/reward_mean": 0.5})
        w.image(1, "samples/images", grid)
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    (run_dir,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    data = _wandb_records(run_dir / f"run-{run_id}.wandb", b"und/reward_mean")
    assert b"und/reward_mean" in data and b"pairuni-test" in data
    (png,) = (run_dir / "files" / "media" / "images" / "samples").glob("images_1_*.png")
    np.testing.assert_array_equal(np.asarray(Image.open(png)), grid)
    with MetricsWriter(tmp_path, tensorboard=False, wandb=settings, start_step=2) as resumed:
        resumed.write(2, {"und/reward_mean": 0.75})
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))) >= 1
    assert (tmp_path / "wandb_run_id").read_text().strip() == run_id


def test_wandb_section_of_the_run_config():
    from pairuni_jax.run_config import load_run_config

    config = load_run_config([], ["logging.wandb={project: p, mode: offline}"])
    assert config.logging.wandb == WandbConfig(project="p", entity=None, mode="offline")
    with pytest.raises(ValueError, match="logging.wandb.mode"):
        load_run_config([], ["logging.wandb={project: p, mode: sometimes}"])
