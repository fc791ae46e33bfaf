"""What a training run leaves to read: metrics (JSONL, TensorBoard, a stdout line), sample image
grids with captions and sampled answers. Lead host only; no TensorFlow/TensorBoard dependency."""

from pairuni_jax.logging.metrics import MetricsWriter, format_line
from pairuni_jax.logging.samples import image_grid, save_answers, save_image_grid
from pairuni_jax.logging.tensorboard import EventWriter, crc32c

__all__ = [
    "EventWriter",
    "MetricsWriter",
    "crc32c",
    "format_line",
    "image_grid",
    "save_answers",
    "save_image_grid",
]
