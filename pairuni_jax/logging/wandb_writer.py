"""Weights & Biases as a metrics destination (optional: ``pip install 'pairuni-jax[wandb]'``).

``logging.wandb: {project, entity, mode}`` in a run config turns it on; the lead host logs. The
run id is kept in ``RUN_DIR/wandb_run_id``, so a resumed run continues the same W&B run. W&B
keeps the points an interrupted run logged after its last checkpoint (it ignores a step it has
already seen), unlike the JSONL file and TensorBoard, which drop them on resume.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pairuni_jax.logging.tensorboard import check_image

RUN_ID_FILE = "wandb_run_id"


class WandbMode(enum.StrEnum):
    """``online``: stream to the W&B server; ``offline``: write the run under ``RUN_DIR/wandb``
    to upload later with ``wandb sync`` (no network); ``disabled``: W&B calls do nothing."""

    ONLINE = "online"
    OFFLINE = "offline"
    DISABLED = "disabled"


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    """``logging.wandb`` of a run config.

    Attributes:
        project: the W&B project the run is logged to.
        entity: the W&B user or team; None: the logged-in user's default entity.
        mode: ``online``, ``offline`` or ``disabled`` (see ``WandbMode``).
    """

    project: str
    entity: str | None = None
    mode: WandbMode = WandbMode.ONLINE

    def __post_init__(self):
        object.__setattr__(self, "mode", WandbMode(self.mode))
        if not self.project:
            raise ValueError("project must be a non-empty W&B project name")


def _run_id(run_dir: Path) -> str:
    path = run_dir / RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    path.write_text(run_id + "\n")
    return run_id


class WandbWriter:
    """Scalars and images of one run directory to one W&B run (``config``: the run config,
    stored with the W&B run)."""

    def __init__(self, run_dir: str | os.PathLike, settings: WandbConfig, config: Any = None):
        try:
            import wandb
        except ImportError as e:
            raise ImportError(
                "logging.wandb needs the wandb package: pip install 'pairuni-jax[wandb]'"
            ) from e
        run_dir = Path(run_dir)
        self._wandb = wandb
        self._run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            mode=settings.mode.value,
            dir=str(run_dir),
            id=_run_id(run_dir),
            resume="allow",
            name=run_dir.name,
            config=config,
            settings=wandb.Settings(console="off", silent=True),
        )

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._run.log(dict(values), step=step)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        self._run.log({tag: self._wandb.Image(check_image(tag, image))}, step=step)

    def close(self) -> None:
        self._run.finish()
