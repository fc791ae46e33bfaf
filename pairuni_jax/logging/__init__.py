"""What a training run leaves to read: metrics (JSONL, TensorBoard, W&B, a stdout line), sample
image grids with captions and sampled answers. Lead host only."""

from pairuni_jax.logging.metrics import JsonlWriter, MetricsWriter, MetricWriter, format_line
from pairuni_jax.logging.samples import image_grid, save_answers, save_image_grid
from pairuni_jax.logging.tensorboard import TensorBoardWriter
from pairuni_jax.logging.wandb_writer import WandbConfig, WandbMode, WandbWriter

__all__ = [
    "JsonlWriter",
    "MetricWriter",
    "MetricsWriter",
    "TensorBoardWriter",
    "WandbConfig",
    "WandbMode",
    "WandbWriter",
    "format_line",
    "image_grid",
    "save_answers",
    "save_image_grid",
]
