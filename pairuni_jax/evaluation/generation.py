"""Generation reward: K images per prompt with classifier-free guidance, scored by HPS.

The images are sampled as in training (``rollout.sample_images`` with the run's CFG weight and
temperature, K = ``samples_per_prompt`` sharing one prefill), decoded by the VQ decoder and, with
a reward model, scored in the same program by the trainer's own HPS reward
(``rl.rewards.generation_reward_fn``: CLIP text features of the prompt, cosine with the image
features of the decoder pixels, quantised as the saved uint8 image is). Batch b samples from
``fold_in(key(seed), b)``: the same seed and batch size give the same images.

Shape letters: P prompts per batch, K images per prompt, L prompt length, s image side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from pairuni_jax.data.pipeline import HPS_CONTEXT_LENGTH, HpsTokenize
from pairuni_jax.data.prompts import PromptEncoder, left_pad
from pairuni_jax.evaluation.batching import (
    DEFAULT_PLACEMENT,
    Placement,
    Throughput,
    padded_chunks,
    run_pipelined,
)
from pairuni_jax.evaluation.inputs import Prompt
from pairuni_jax.models.vq import to_uint8
from pairuni_jax.rewards.registry import RewardWeights
from pairuni_jax.rl.rewards import generation_reward_fn
from pairuni_jax.rollout.image import ImageSettings, sample_images

Array = jax.Array
HPS_ONLY = RewardWeights(generation={"hps": 1.0})


@dataclasses.dataclass(frozen=True)
class GeneratedImage:
    """Image ``index`` (0..K-1) of ``prompt`` and its HPS (None without a reward model)."""

    prompt: Prompt
    index: int
    hps: float | None


class ImageProgram:
    """K CFG images per prompt, decoded to uint8, with their HPS: one ``jax.jit`` program.

    graphdef / states: the policy, as in ``AnswerProgram``. settings: CFG weight, temperature,
    K = ``samples_per_prompt``. hps_graphdef: the reward model's graph (its params are an
    argument of each call), or None for images only.
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        settings: ImageSettings,
        hps_graphdef: nnx.GraphDef | None = None,
        placement: Placement = DEFAULT_PLACEMENT,
    ):
        self.graphdef = graphdef
        self.settings = settings
        self.placement = placement
        self._reward = (
            None if hps_graphdef is None else generation_reward_fn(HPS_ONLY, hps_graphdef)
        )
        self._jitted = jax.jit(self._generate, out_shardings=placement.out_sharding)

    def _generate(self, states, hps_params, input_ids, prompt_mask, hps_ids, rng):
        model = nnx.merge(self.graphdef, *states)
        rollout = sample_images(model, input_ids, prompt_mask, rng, self.settings)
        pixels = model.decode_image_tokens(rollout.tokens)
        if self._reward is None:
            return to_uint8(pixels), None
        k = self.settings.samples_per_prompt
        batch = {"hps_input_ids": hps_ids}
        _, parts = self._reward({"hps": hps_params}, pixels, rollout.tokens, batch, k)
        return to_uint8(pixels), parts["hps"]

    def __call__(self, states, hps_params, input_ids, prompt_mask, hps_ids, rng):
        """input_ids int32[P, L], prompt_mask bool[P, L], hps_ids int32[P, 77] (host), a key.

        Returns images uint8[P·K, s, s, 3] (row p·K + k: image k of prompt p) and HPS
        float32[P·K] (None without a reward model), without waiting for them."""
        put = self.placement.put
        ids, mask, hps = put(input_ids), put(prompt_mask), put(hps_ids)
        return self._jitted(states, hps_params, ids, mask, hps, rng)

    def compiled_programs(self) -> int:
        return self._jitted._cache_size()


class PromptSet:
    """Prompts tokenized once at the length of the longest (and for HPS, when scored)."""

    def __init__(
        self, prompts: Sequence[Prompt], encoder: PromptEncoder, hps_tokenize: HpsTokenize | None
    ):
        if not prompts:
            raise ValueError("no prompts to evaluate")
        self.prompts = list(prompts)
        self.encoder = encoder
        self.ids = [encoder.generation_ids(p.prompt) for p in self.prompts]
        self.prompt_length = max(len(ids) for ids in self.ids)
        texts = [p.prompt for p in self.prompts]
        self.hps_ids = None if hps_tokenize is None else np.asarray(hps_tokenize(texts), np.int32)

    def batch(self, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ids int32[P, L], mask bool[P, L], HPS ids int32[P, 77] (zeros without HPS)."""
        rows = [left_pad(self.ids[i], self.prompt_length, self.encoder.ids.pad) for i in positions]
        hps = (
            self.hps_ids[list(positions)]
            if self.hps_ids is not None
            else np.zeros((len(positions), HPS_CONTEXT_LENGTH), np.int32)
        )
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), hps


ImageSink = Callable[[GeneratedImage, np.ndarray], None]  # (the record, uint8[s, s, 3])


def generate_images(
    program: ImageProgram,
    states: tuple[nnx.State, ...],
    hps_params: Any,
    prompts: PromptSet,
    *,
    prompts_per_batch: int,
    seed: int,
    sink: ImageSink | None = None,
    show_progress: bool = True,
) -> tuple[list[GeneratedImage], Throughput]:
    """K images for every prompt; each is handed to ``sink`` (e.g. to save it) as it arrives,
    and not kept. Returns the images' HPS records in prompt order and the throughput (images)."""
    k = program.settings.samples_per_prompt
    key = jax.random.key(seed)
    results: list[GeneratedImage] = []

    def dispatch(chunk: list[int], index: int) -> Any:
        return program(states, hps_params, *prompts.batch(chunk), jax.random.fold_in(key, index))

    def finish(chunk: list[int], real: int, outputs: Any) -> None:
        images, scores = jax.device_get(outputs)
        for row in range(real * k):
            hps = None if scores is None else float(scores[row])
            image = GeneratedImage(prompts.prompts[chunk[row // k]], row % k, hps)
            if sink is not None:
                sink(image, np.asarray(images[row]))
            results.append(image)

    stats = run_pipelined(
        padded_chunks(range(len(prompts.prompts)), prompts_per_batch),
        dispatch,
        finish,
        total=len(prompts.prompts),
        unit="prompt",
        desc="generation",
        show=show_progress,
    )
    stats.items *= k
    stats.first_batch_items *= k
    return results, stats
