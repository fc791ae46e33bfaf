"""Sample outputs a person looks at: image grids with captions, and sampled answers as text."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_PAD = 4  # pixels around each tile and its caption


def _wrap(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; words wider than a line are split by characters."""
    lines = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for char in word:
                if line and font.getlength(line + char) > width:
                    lines.append(line)
                    line = ""
                line += char
        lines.append(line)
    return lines


def image_grid(
    images: np.ndarray,
    captions: Sequence[str] | None = None,
    *,
    min_size: int = 128,
    columns: int | None = None,
) -> np.ndarray:
    """Tiles ``images`` (uint8[N, S, S, 3]) on white, each caption wrapped under its image.

    Images smaller than ``min_size`` are upscaled by the smallest integer factor that reaches it
    (nearest neighbour, so pixels stay sharp). ``columns`` defaults to ceil(sqrt(N)). Captions use
    PIL's default font. Returns uint8[H, W, 3].
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"images: expected uint8[N, S, S, 3], got {images.dtype}{list(images.shape)}"
        )
    n, height, width = images.shape[:3]
    if captions is not None and len(captions) != n:
        raise ValueError(f"captions: expected one per image ({n}), got {len(captions)}")
    scale = max(1, math.ceil(min_size / min(height, width)))
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    height, width = height * scale, width * scale

    font = ImageFont.load_default()
    wrapped = [_wrap(c, font, width) for c in captions] if captions is not None else []
    line_height = font.getbbox("Ag|")[3] + 2
    caption_height = max((len(lines) for lines in wrapped), default=0) * line_height
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    tile_w, tile_h = width + _PAD, height + caption_height + _PAD

    canvas = Image.new("RGB", (columns * tile_w + _PAD, rows * tile_h + _PAD), "white")
    draw = ImageDraw.Draw(canvas)
    for i, image in enumerate(images):
        x, y = _PAD + (i % columns) * tile_w, _PAD + (i // columns) * tile_h
        canvas.paste(Image.fromarray(image), (x, y))
        for j, line in enumerate(wrapped[i] if wrapped else []):
            draw.text((x, y + height + j * line_height), line, fill="black", font=font)
    return np.asarray(canvas)


def save_image_grid(
    path: str | os.PathLike,
    images: np.ndarray,
    captions: Sequence[str] | None = None,
    **grid_kwargs: Any,
) -> np.ndarray:
    """Writes ``image_grid(images, captions, **grid_kwargs)`` to the PNG ``path`` (its
    directory is created) and returns the grid, e.g. for ``MetricsWriter.image``."""
    grid = image_grid(images, captions, **grid_kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return grid


def _text(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    return str(value).replace("\n", "\n    ")  # continuation lines indented under the key


def save_answers(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> None:
    """Writes sampled answers as readable text, one block per record with each of its fields:

        # 1
        question: What colour is the square?
        answer: <answer> B </answer>
        reward: 1

    ``records``: e.g. ``{"question": str, "answer": str, "reward": float}``; floats at 4
    significant digits, multi-line values indented. The file's directory is created.
    """
    blocks = []
    for number, record in enumerate(records, 1):
        fields = "".join(f"{key}: {_text(value)}\n" for key, value in record.items())
        blocks.append(f"# {number}\n{fields}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(blocks), encoding="utf-8")
