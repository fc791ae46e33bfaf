"""Host-side Janus image preprocessing (``spec/janus.md`` §4.1), NHWC.

Decoding reads every pixel (a truncated or corrupt file fails here, not as a black image) into
8-bit RGB the way PIL's ``convert("RGB")`` does for 8-bit modes (palette images through their
palette, alpha dropped); 16-bit grayscale (PIL mode ``I;16``, e.g. a 16-bit PNG) is scaled to
8 bits, ``round(v * 255 / 65535)``, where PIL would clip it to white; 32-bit integer and float
images (no defined 8-bit range) are refused with ``UnsupportedImageError``.

Then, as the original: RGB; resize so the long side is ``image_size`` (short side ``max(int(side / long * S), 14)``,
truncating) with PIL bicubic; pad to a square with (127, 127, 127), the image centred as the
original does; scale to [-1, 1] with mean = std = 0.5. The result is ``float32[S, S, 3]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

BACKGROUND = (127, 127, 127)  # int(0.5 * 255) per channel
MIN_SIZE = 14
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class UnsupportedImageError(ValueError):
    """An image whose pixels have no defined 8-bit RGB reading (32-bit integer or float)."""


def load_image(path: str | Path) -> Image.Image:
    """Decodes every pixel of the image at ``path`` into 8-bit RGB (see the module docstring)."""
    with Image.open(path) as image:
        image.load()  # all pixels now: a truncated or corrupt file raises here
        return to_rgb(image, str(path))


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """8-bit RGB of a decoded PIL image (see the module docstring); ``name`` for errors."""
    # A 16-bit grayscale PNG opens as "I;16" (or "I" in older Pillow).
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG"):
        values = np.asarray(image).astype(np.float64)
        gray = np.rint(np.clip(values, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode in ("I", "F"):
        kind = "32-bit integer" if image.mode == "I" else "floating-point"
        raise UnsupportedImageError(
            f"{name}: {kind} pixels (PIL mode {image.mode}) have no defined 8-bit range; "
            "save the image as 8-bit RGB (or 16-bit PNG)"
        )
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
    square = expand_to_square(resize_long_side(to_rgb(image), image_size))
    scaled = (np.asarray(square, dtype=np.float64) * (1.0 / 255.0)).astype(np.float32)
    return (scaled - np.float32(0.5)) / np.float32(0.5)


def load_and_preprocess(path: str | Path, image_size: int) -> np.ndarray:
    """``preprocess_image(load_image(path), image_size)``: ``float32[S, S, 3]`` in [-1, 1]."""
    return preprocess_image(load_image(path), image_size)
