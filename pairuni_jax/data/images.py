"""Host-side Janus image preprocessing (``spec/janus.md`` §4.1), NHWC.

RGB; resize so the long side is ``image_size`` (short side ``max(int(side / long * S), 14)``,
truncating) with PIL bicubic; pad to a square with (127, 127, 127), the image centred as the
original does; scale to [-1, 1] with mean = std = 0.5. The result is ``float32[S, S, 3]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

BACKGROUND = (127, 127, 127)  # int(0.5 * 255) per channel
MIN_SIZE = 14


def load_image(path: str | Path) -> Image.Image:
    """Decodes the image at ``path`` as RGB."""
    with Image.open(path) as image:
        return image.convert("RGB")


def resize_long_side(image: Image.Image, image_size: int, min_size: int = MIN_SIZE) -> Image.Image:
    """Bicubic resize keeping the aspect ratio, long side = ``image_size``."""
    width, height = image.size
    longest = max(width, height)
    new_height = max(int(height / longest * image_size), min_size)
    new_width = max(int(width / longest * image_size), min_size)
    return image.resize((new_width, new_height), Image.Resampling.BICUBIC)


def expand_to_square(
    image: Image.Image, background: tuple[int, int, int] = BACKGROUND
) -> Image.Image:
    """Pads to a square canvas of side max(w, h), the image centred (offsets floor-divided)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(
        image, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0)
    )
    return canvas


def preprocess_image(image: Image.Image, image_size: int) -> np.ndarray:
    """Janus preprocessing of one RGB image: ``float32[S, S, 3]`` in [-1, 1], S = image_size."""
    square = expand_to_square(resize_long_side(image.convert("RGB"), image_size))
    scaled = (np.asarray(square, dtype=np.float64) * (1.0 / 255.0)).astype(np.float32)
    return (scaled - np.float32(0.5)) / np.float32(0.5)


def load_and_preprocess(path: str | Path, image_size: int) -> np.ndarray:
    """``preprocess_image(load_image(path), image_size)``: ``float32[S, S, 3]`` in [-1, 1]."""
    return preprocess_image(load_image(path), image_size)
