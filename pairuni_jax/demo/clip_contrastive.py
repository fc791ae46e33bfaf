"""Trains a CLIP contrastively on (image, caption) pairs (the demo world's reward model).

The image side goes through the HPS reward's own preprocessing (``janus_to_clip``: Janus pixels
in [-1, 1] → uint8 levels → CLIP normalisation), so the trained model scores Janus decoder
output exactly as ``hps_score`` will. The loss is CLIP's symmetric cross-entropy over the batch
with a learned temperature; captions of the same scene (``keys``) count as positives of each
other rather than as negatives.

Shape letters: N examples, B batch, S image side, D joint embedding width.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from pairuni_jax.models.clip import CLIP, CLIPConfig
from pairuni_jax.rewards.hps import l2_normalize
from pairuni_jax.rewards.preprocess import janus_to_clip

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CLIPTrainConfig:
    """steps: optimizer updates; batch_size: pairs per update; learning_rate: AdamW's (cosine
    decay to 10%); weight_decay: AdamW's; init_temperature: the initial logit scale (learned,
    at most 100, as CLIP)."""

    steps: int = 2000
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    init_temperature: float = 10.0
    seed: int = 0


class _Trainable(nnx.Module):
    def __init__(self, model: CLIP, init_temperature: float):
        self.model = model
        self.log_scale = nnx.Param(jnp.log(jnp.float32(init_temperature)))


def contrastive_loss(
    model: CLIP, log_scale: Array, pixels: Array, ids: Array, keys: Array
) -> tuple[Array, Array]:
    """pixels float[B, S, S, 3] in [-1, 1], ids int32[B, 77], keys int32[B] (equal key: same
    scene). Returns (loss, accuracy of picking a positive caption for each image)."""
    size = model.config.vision.image_size
    image = l2_normalize(model.encode_image(janus_to_clip(pixels, size)))
    text = l2_normalize(model.encode_text(ids))
    scale = jnp.exp(jnp.minimum(log_scale, jnp.log(100.0)))
    logits = scale * image @ text.T
    positive = (keys[:, None] == keys[None, :]).astype(jnp.float32)
    targets = positive / positive.sum(axis=1, keepdims=True)
    loss = 0.5 * (
        optax.softmax_cross_entropy(logits, targets).mean()
        + optax.softmax_cross_entropy(logits.T, targets).mean()
    )
    accuracy = jnp.mean(positive[jnp.arange(len(keys)), jnp.argmax(logits, axis=1)])
    return loss, accuracy


def train_clip(
    config: CLIPConfig,
    pixels: np.ndarray,
    ids: np.ndarray,
    keys: np.ndarray,
    train: CLIPTrainConfig,
    progress: bool = True,
) -> CLIP:
    """A ``CLIP`` of ``config`` trained on example i = (pixels[i], ids[i]) with scene keys[i].

    pixels: float32[N, S, S, 3] in [-1, 1]; ids: int32[N, 77]; keys: int[N].
    """
    rng = np.random.default_rng(train.seed)
    trainable = _Trainable(CLIP(config, rngs=nnx.Rngs(train.seed)), train.init_temperature)
    schedule = optax.cosine_decay_schedule(train.learning_rate, train.steps, alpha=0.1)
    optimizer = nnx.Optimizer(
        trainable, optax.adamw(schedule, weight_decay=train.weight_decay), wrt=nnx.Param
    )

    @nnx.jit
    def step(trainable, optimizer, pixels, ids, keys):
        def loss_fn(t):
            return contrastive_loss(t.model, t.log_scale[...], pixels, ids, keys)

        (loss, accuracy), grads = nnx.value_and_grad(loss_fn, has_aux=True)(trainable)
        optimizer.update(trainable, grads)
        return loss, accuracy

    bar = tqdm(range(train.steps), desc="clip", disable=not progress)
    for i in bar:
        pick = rng.choice(len(pixels), train.batch_size, replace=False)
        batch = pixels[pick]
        flip = rng.random(train.batch_size) < 0.5
        batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
        loss, accuracy = step(
            trainable,
            optimizer,
            jnp.asarray(batch),
            jnp.asarray(ids[pick]),
            jnp.asarray(keys[pick]),
        )
        if (i + 1) % 100 == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}", acc=f"{float(accuracy):.2f}")
    return trainable.model
