"""``RUN_DIR/curves.png``: one panel per listed metric the run logged, readable as a PNG."""

import json

import numpy as np
from PIL import Image

from pairuni_jax.logging import curves

ALL = [p.title for p in curves.PANELS]


def _rows(steps: int, with_kl: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "time": 0.0, "grad_norm": 1.0}
        for key in ("und/reward_mean", "gen/reward_mean", "und/accuracy", "learning_rate"):
            row[key] = step / steps + 0.1 * rng.normal()
        for side in ("und", "gen"):
            row[f"{side}/entropy"] = 2.0 - step / steps
            row[f"{side}/clip_fraction"] = 0.01 * step
            if with_kl:
                row[f"{side}/kl"] = 1e-3 * step
        rows.append(row)
    return rows


def test_curves_png_has_one_panel_per_metric(tmp_path):
    path = tmp_path / "curves.png"
    titles = curves.draw_curves(_rows(30, with_kl=True), path)
    assert titles == ALL
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.text["Panels"].split(curves.PANEL_SEPARATOR) == ALL
        columns = curves.COLUMNS
        lines = -(-len(ALL) // columns)
        assert image.size == (
            columns * curves.PANEL_INCHES[0] * curves.DPI,
            lines * curves.PANEL_INCHES[1] * curves.DPI,
        )
        pixels = np.asarray(image.convert("RGB"))
    # Something is drawn in every panel cell (not a blank figure).
    h, w = pixels.shape[0] // lines, pixels.shape[1] // columns
    for i in range(len(ALL)):
        cell = pixels[(i // columns) * h : (i // columns + 1) * h, (i % columns) * w :][:, :w]
        assert (cell < 200).any(axis=-1).mean() > 0.01


def test_curves_leave_out_kl_when_the_run_has_none(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = [json.dumps(row) + "\n" for row in _rows(5, with_kl=False)]
    (run_dir / "metrics.jsonl").write_text("".join(lines) + '{"step": 6, "und/acc')  # torn line
    out = curves.draw_run_curves(run_dir)
    with Image.open(out) as image:
        assert image.text["Panels"].split(curves.PANEL_SEPARATOR) == [
            t for t in ALL if t != "KL to the reference"
        ]


def test_moving_average_is_the_trailing_window_mean():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(curves.moving_average(values, 2), [1.0, 1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(curves.moving_average(values, 1), values)
