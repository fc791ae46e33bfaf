"""Trains a VQ model as an autoencoder on images (the demo world's image tokenizer).

A VQ-VAE in the geometry the Janus VQ decodes with (LlamaGen, ``l2_norm=True``): encoder latents
and codebook rows are L2-normalised, each latent is replaced by its nearest row with a
straight-through gradient, and the loss is pixel MSE + codebook loss + β · commitment.

Training from scratch in two phases, which converges in far fewer steps than VQ from the start:
``continuous_steps`` as a plain autoencoder on the normalised latents, then the codebook is set by
spherical k-means on the latents of all images, then ``steps - continuous_steps`` with
quantisation. Rows that no latent picked during the last ``restart_every`` steps are restarted from
random latents of the current batch, so a small codebook stays fully used.

Shape letters: B images, S image side, g token-grid side, D codebook width, C codebook size.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from pairuni_jax.models.random_init import compiled_init
from pairuni_jax.models.vq import VQConfig, VQModel

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class VQTrainConfig:
    """steps: optimizer updates in all; continuous_steps: of them, the first ones without
    quantisation; batch_size: images per update; learning_rate: Adam's (cosine decay to 10%);
    commitment: β; restart_every: steps between dead-row restarts (0: never);
    kmeans_iterations: Lloyd iterations of the codebook initialisation."""

    steps: int = 1500
    continuous_steps: int = 300
    batch_size: int = 32
    learning_rate: float = 2e-3
    commitment: float = 0.25
    restart_every: int = 100
    kmeans_iterations: int = 20
    seed: int = 0


def _normalize(x: Array) -> Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def autoencode(model: VQModel, pixels: Array, quantized: Array) -> tuple[Array, ...]:
    """pixels float[B, S, S, 3] → (reconstruction [B, S, S, 3], latents [B, g, g, D] normalised,
    nearest codebook rows [B, g, g, D], tokens int32[B, g, g]). ``quantized``: 1.0 decodes the
    codebook rows (straight-through), 0.0 the latents themselves (a traced scalar: one program
    for both phases)."""
    z = _normalize(model.encode_latents(pixels).astype(jnp.float32))
    codebook = _normalize(model.quantize.embedding.embedding[...].astype(jnp.float32))
    tokens = jnp.argmax(jnp.einsum("bhwd,cd->bhwc", z, codebook), axis=-1)
    zq = codebook[tokens]
    z_st = z + quantized * jax.lax.stop_gradient(zq - z)
    recon = model.decoder(model.post_quant_conv(z_st))
    return recon, z, zq, tokens


def vq_loss(
    model: VQModel, pixels: Array, quantized: Array, commitment: float
) -> tuple[Array, dict[str, Array]]:
    recon, z, zq, tokens = autoencode(model, pixels, quantized)
    mse = jnp.mean((recon - pixels) ** 2)
    codebook = jnp.mean(jnp.sum((jax.lax.stop_gradient(z) - zq) ** 2, -1))
    commit = jnp.mean(jnp.sum((z - jax.lax.stop_gradient(zq)) ** 2, -1))
    loss = mse + quantized * (codebook + commitment * commit)
    return loss, {"mse": mse, "tokens": tokens, "latents": z}


def spherical_kmeans(points: np.ndarray, k: int, iterations: int, rng: np.random.Generator):
    """k unit-norm centroids of unit-norm ``points`` float[N, D] (N >= k): Lloyd's iterations on
    cosine similarity from k distinct random points; an empty cluster keeps its centroid."""
    centroids = points[rng.choice(len(points), k, replace=False)]
    for _ in range(iterations):
        assign = np.argmax(points @ centroids.T, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, points)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = np.where(norms > 0, sums / np.maximum(norms, 1e-12), centroids)
    return centroids


def train_vq(
    config: VQConfig, images: np.ndarray, train: VQTrainConfig, progress: bool = True
) -> VQModel:
    """A ``VQModel`` of ``config`` trained on ``images`` (float32[N, S, S, 3] in [-1, 1])."""
    rng = np.random.default_rng(train.seed)
    model = compiled_init(lambda: VQModel(config, rngs=nnx.Rngs(train.seed)))
    schedule = optax.cosine_decay_schedule(train.learning_rate, train.steps, alpha=0.1)
    optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, pixels, quantized):
        def loss_fn(m):
            return vq_loss(m, pixels, quantized, train.commitment)

        (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss, aux

    @nnx.jit
    def latents(model, pixels):
        return _normalize(model.encode_latents(pixels).astype(jnp.float32))

    table = model.quantize.embedding.embedding
    used = np.zeros(config.num_embeddings, bool)
    bar = tqdm(range(train.steps), desc="vq", disable=not progress)
    for i in bar:
        if i == train.continuous_steps:
            z = np.concatenate(
                [
                    np.asarray(latents(model, jnp.asarray(images[j : j + 64])))
                    for j in range(0, len(images), 64)
                ]
            ).reshape(-1, config.embed_dim)
            centroids = spherical_kmeans(z, config.num_embeddings, train.kmeans_iterations, rng)
            table[...] = jnp.asarray(centroids, table[...].dtype)
        batch = images[rng.integers(0, len(images), train.batch_size)]
        flip = rng.random(train.batch_size) < 0.5
        batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
        quantized = jnp.float32(i >= train.continuous_steps)
        loss, aux = step(model, optimizer, jnp.asarray(batch), quantized)
        if i < train.continuous_steps:
            continue
        used[np.asarray(aux["tokens"]).reshape(-1)] = True
        if train.restart_every and (i + 1) % train.restart_every == 0 and i + 1 < train.steps:
            dead = np.flatnonzero(~used)
            if len(dead):
                z = np.asarray(aux["latents"]).reshape(-1, config.embed_dim)
                picks = z[rng.choice(len(z), len(dead), replace=len(dead) > len(z))]
                table[...] = table[...].at[dead].set(jnp.asarray(picks, table[...].dtype))
            bar.set_postfix(mse=f"{float(aux['mse']):.4f}", dead=len(dead))
            used[:] = False
    return model
