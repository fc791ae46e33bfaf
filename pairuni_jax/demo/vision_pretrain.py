"""Pretrains the policy's SigLIP tower to see the demo world's attributes.

Janus-Pro's understanding encoder arrives pretrained; a random tiny SigLIP does not see: on the
demo images a linear probe of its mean-pooled features reads colour at chance, and a policy built
on it stays at chance after hundreds of supervised steps. This trains the tower (with linear
heads that are then dropped) to classify each image's attributes from its mean-pooled output,
which puts them where the aligner and the language model can read them. The tower is then frozen,
in the supervised warm start as in Pair-GRPO (``grpo.frozen_modules``).

Shape letters: N images, B batch, S image side, T patch tokens, D tower width, A attributes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from pairuni_jax.models.siglip import SiglipVisionModel

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class VisionTrainConfig:
    """steps: optimizer updates; batch_size: images per update; learning_rate, weight_decay:
    AdamW's (constant); seed: batch order and head init."""

    steps: int = 400
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0


class _Classifier(nnx.Module):
    """The tower and one linear head per attribute over its mean-pooled tokens."""

    def __init__(self, tower: SiglipVisionModel, num_classes: tuple[int, ...], rngs: nnx.Rngs):
        self.tower = tower
        width = tower.config.hidden_size
        self.heads = nnx.List([nnx.Linear(width, n, rngs=rngs) for n in num_classes])

    def __call__(self, pixels: Array) -> list[Array]:
        pooled = self.tower(pixels).mean(axis=1)  # [B, T, D] -> [B, D]
        return [head(pooled) for head in self.heads]


def attribute_loss(classifier: _Classifier, pixels: Array, labels: Array) -> tuple[Array, Array]:
    """pixels float[B, S, S, 3] in [-1, 1], labels int32[B, A]. Returns (the summed
    cross-entropy over attributes, float32[A] accuracy per attribute)."""
    logits = classifier(pixels)
    losses = [
        optax.softmax_cross_entropy_with_integer_labels(x, labels[:, a]).mean()
        for a, x in enumerate(logits)
    ]
    accuracy = [jnp.mean(jnp.argmax(x, -1) == labels[:, a]) for a, x in enumerate(logits)]
    return sum(losses), jnp.stack(accuracy)


def pretrain_vision(
    tower: SiglipVisionModel,
    pixels: np.ndarray,
    labels: np.ndarray,
    num_classes: tuple[int, ...],
    train: VisionTrainConfig,
    progress: bool = True,
) -> np.ndarray:
    """Trains ``tower`` in place on image i = pixels[i] with attribute values labels[i].

    pixels: float32[N, S, S, 3] in [-1, 1]; labels: int[N, A], labels[:, a] < num_classes[a].
    Returns float32[A]: the last batch's accuracy per attribute.
    """
    if labels.shape != (len(pixels), len(num_classes)):
        raise ValueError(
            f"labels: expected shape {(len(pixels), len(num_classes))}, got {labels.shape}"
        )
    rng = np.random.default_rng(train.seed)
    classifier = _Classifier(tower, num_classes, nnx.Rngs(train.seed))
    optimizer = nnx.Optimizer(
        classifier,
        optax.adamw(train.learning_rate, weight_decay=train.weight_decay),
        wrt=nnx.Param,
    )

    @nnx.jit
    def step(classifier, optimizer, pixels, labels):
        grad_fn = nnx.value_and_grad(attribute_loss, has_aux=True)
        (loss, accuracy), grads = grad_fn(classifier, pixels, labels)
        optimizer.update(classifier, grads)
        return loss, accuracy

    bar = tqdm(range(train.steps), desc="vision", disable=not progress)
    for i in bar:
        pick = rng.choice(len(pixels), train.batch_size, replace=False)
        loss, accuracy = step(
            classifier, optimizer, jnp.asarray(pixels[pick]), jnp.asarray(labels[pick], jnp.int32)
        )
        if (i + 1) % 100 == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}", acc=f"{float(jnp.min(accuracy)):.2f}")
    return np.asarray(accuracy)
