"""TensorBoard event files through tensorboardX (the writer MaxText's metric logger uses).

Each writer gets its own event file (``events.out.tfevents.<time>.<host>.<pid>.<n>``), so
writers of one run, even of one process, never write into each other's file.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping

import numpy as np

_writer_ids = itertools.count()


def check_image(tag: str, image: np.ndarray) -> np.ndarray:
    """``image`` as uint8[H, W, C], C = 1 (grey), 3 (RGB) or 4 (RGBA); anything else is an error."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"image {tag!r}: expected uint8[H, W, 1|3|4], got {image.dtype}{list(image.shape)}"
        )
    return image


class TensorBoardWriter:
    """Scalars and images to a new event file in ``logdir``.

    ``purge_step`` (for a resumed run: the first step it will log) writes a SessionLog START
    event at that step, on which TensorBoard discards the points at steps >= ``purge_step`` of
    the directory's earlier files: those the interrupted run logged after its last checkpoint.
    """

    def __init__(self, logdir: str | os.PathLike, *, purge_step: int | None = None):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(
            str(logdir),
            purge_step=purge_step,
            filename_suffix=f".{os.getpid()}.{next(_writer_ids)}",
        )

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), step)
        self._writer.flush()

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """One PNG image; ``image``: uint8[H, W, C] (see ``check_image``)."""
        image = check_image(tag, image)
        self._writer.add_image(tag, image, step, dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
