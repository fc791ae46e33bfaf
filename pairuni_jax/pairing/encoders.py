"""The built-in image towers of ``pairuni data pair`` (a module of its own so that the CLI can
offer them without importing JAX)."""

from __future__ import annotations

import enum


class Encoder(enum.StrEnum):
    """The built-in image towers."""

    SIGLIP = "siglip"
    CLIP = "clip"
