"""The one length limit every rollout obeys: prompt plus new tokens within the model's positions."""

from __future__ import annotations

from pairuni_jax.errors import UserError
from pairuni_jax.models.janus import JanusConfig


class TooLongError(UserError):
    """A prompt plus its new tokens that do not fit the model's positions."""


def check_positions(config: JanusConfig, prompt_tokens: int, new_tokens: int, what: str) -> None:
    """Raises ``TooLongError`` when ``prompt_tokens + new_tokens`` exceed the model's
    ``text.max_position_embeddings`` (RoPE beyond the trained positions gives garbage)."""
    limit = config.text.max_position_embeddings
    if prompt_tokens + new_tokens > limit:
        raise TooLongError(
            f"{what}: {prompt_tokens} prompt tokens + {new_tokens} new tokens = "
            f"{prompt_tokens + new_tokens}, more than the model's {limit} positions "
            "(text.max_position_embeddings)"
        )
