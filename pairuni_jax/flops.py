"""Analytic model FLOPs of one Pair-GRPO step, tokens per step, and MFU.

Counts matrix-multiply and convolution FLOPs only (2 per multiply-add), as the program computes
them (``models.cost``). Shape letters as in ``rl.train_step``: P pairs, K_u / K_g rollouts per
pair, B_u = P·K_u answers and B_g = P·K_g images, Lu / Lg understanding / generation prompt
lengths, N answer tokens, I image tokens.

What one step runs (``TrainStep``), and how it is counted:

- rollouts: the answers and the CFG images, counted by the engine's own cost model
  (``rollout.cost``: prefills over the prompts' own slots, decode steps over the cache they
  actually read, image decode in its cache segments);
- rewards: VQ decode of B_g images, the HPS image tower on them and its text tower once per pair;
- training, per inner iteration: the teacher-forced forward and backward (3× the forward:
  "model FLOPs") of the answer sequences (Lu + N positions) and the image sequences
  (Lg + I − 1 positions; 2·B_g rows with guided log-probs), the frozen SigLIP forward once. With
  LoRA (a frozen base) the backward computes no weight gradients: input gradients only, i.e.
  1× the forward's matmuls with a parameter operand and 2× its attention scores and values; the
  adapters' own matmuls (2·R·(I + O) per adapted matrix and token, under 1% at R = 16 on the
  Janus-Pro LLMs) are left out;
  ``recompute`` is what the backward recomputes (hardware FLOPs, not model FLOPs): the heads of
  the rematerialised log-prob chunks, and the decoder stack with ``remat=full``;
- reference: with ``kl_beta > 0``, one forward of the reference policy on both sides.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pairuni_jax.models.clip import CLIPConfig
from pairuni_jax.models.cost import (
    aligner,
    clip_image,
    clip_text,
    generation_head,
    linear,
    llm_attention,
    llm_forward,
    siglip_forward,
    vq_decode,
)
from pairuni_jax.models.janus import JanusConfig
from pairuni_jax.rollout import cost as rollout_cost

# -- accelerators --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip (one JAX device)."""

    name: str
    hbm_bytes: int
    peak_flops: float  # dense bf16 matmul FLOP/s
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float  # chip-to-chip bytes/s, both directions of all links together
    device_kinds: tuple[str, ...]  # ``jax.Device.device_kind`` prefixes of this chip


GIB = 2**30
MIB = 2**20

# Sources. Google Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p,
# /v6e), per chip: v4 32 GiB HBM2 at 1200 GB/s, 275 TFLOP/s bf16; v5e 16 GiB at 819 GB/s,
# 197 TFLOP/s, 400 GB/s bidirectional ICI; v5p 95 GiB at 2765 GB/s, 459 TFLOP/s, 1200 GB/s ICI;
# v6e 32 GiB at 1640 GB/s, 918 TFLOP/s, 800 GB/s ICI. The v4 page gives no per-chip ICI figure:
# 6 links x 2 directions x 45 GB/s (the TPU v4 paper's link rate) is used. NVIDIA H100 SXM and
# H200 SXM datasheets (nvidia.com/en-us/data-center/h100, /h200): 989 TFLOP/s dense bf16 (1979
# is with 2:4 sparsity), 3.35 and 4.8 TB/s HBM, 900 GB/s NVLink; their memory is what nvidia-smi
# reports (81559 MiB for the 80 GB H100, 143771 MiB for the 141 GB H200).
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 32 * GIB, 275e12, 1200e9, 540e9, ("TPU v4",)),
    "v5e": Chip("v5e", 16 * GIB, 197e12, 819e9, 400e9, ("TPU v5 lite", "TPU v5e")),
    "v5p": Chip("v5p", 95 * GIB, 459e12, 2765e9, 1200e9, ("TPU v5p", "TPU v5")),
    "v6e": Chip("v6e", 32 * GIB, 918e12, 1640e9, 800e9, ("TPU v6 lite", "TPU v6e")),
    "h100": Chip("h100", 81559 * MIB, 989e12, 3.35e12, 900e9, ("NVIDIA H100",)),
    "h200": Chip("h200", 143771 * MIB, 989e12, 4.8e12, 900e9, ("NVIDIA H200",)),
}


def chip_for_device_kind(device_kind: str) -> Chip | None:
    """The chip of a ``jax.Device.device_kind`` ("TPU v5 lite", "NVIDIA H100 80GB HBM3"), or None
    (CPU, unknown accelerators)."""
    best: tuple[int, Chip] | None = None
    for chip in CHIPS.values():
        for kind in chip.device_kinds:
            if device_kind.startswith(kind) and (best is None or len(kind) > best[0]):
                best = (len(kind), chip)
    return None if best is None else best[1]


# -- one step ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepShapes:
    """The static sizes of one step (global, over all hosts)."""

    pairs: int  # P
    und_rollouts: int  # K_u
    gen_rollouts: int  # K_g
    und_len: int  # Lu
    gen_len: int  # Lg
    answer_tokens: int  # N
    inner_iterations: int = 1
    guided_logprobs: bool = False
    reference: bool = False  # kl_beta > 0
    remat_full: bool = True
    image_cache_segments: int = 1  # decode loops of an image rollout (``ImageSettings``)
    frozen_base: bool = False  # LoRA: only adapters train, the backward has no weight gradients

    @classmethod
    def from_run_config(cls, config: Any, global_pairs: int) -> StepShapes:
        """From a ``RunConfig`` and the global number of pairs (``pairs_per_host`` × hosts)."""
        from pairuni_jax.rl.policy import ImageLogprob

        g = config.grpo
        return cls(
            pairs=global_pairs,
            und_rollouts=g.rollout.num_und_rollouts,
            gen_rollouts=g.rollout.num_gen_rollouts,
            und_len=config.data.max_und_len,
            gen_len=config.data.max_gen_len,
            answer_tokens=g.rollout.max_new_tokens,
            inner_iterations=g.inner_iterations,
            guided_logprobs=g.image_logprob is ImageLogprob.GUIDED,
            reference=g.loss.kl_beta > 0,
            remat_full=config.model.remat == "full",
            image_cache_segments=g.rollout.image_cache_segments,
            frozen_base=config.model.lora is not None,
        )


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """Global FLOPs of one step by part (see the module docstring)."""

    answer_prefill: float  # SigLIP, aligner and the prompt through the decoder
    answer_decode: float  # the N − 1 one-token steps and the text head
    image_prefill: float
    image_decode: float  # the I − 1 one-token steps, generation aligner and head
    rewards: float  # VQ decode + HPS
    reference: float  # the KL reference forwards (0 without KL)
    training: float  # model FLOPs of the μ inner iterations (forward + backward)
    recompute: float  # forwards the backward recomputes (hardware FLOPs, not model FLOPs)

    @property
    def decode(self) -> float:
        return self.answer_decode + self.image_decode

    @property
    def rollout(self) -> float:
        """Everything outside the gradient: sampling, rewards and the reference forwards."""
        return (
            self.answer_prefill + self.image_prefill + self.decode + self.rewards + self.reference
        )

    @property
    def model(self) -> float:
        """Model FLOPs of the step (the MFU numerator)."""
        return self.rollout + self.training

    @property
    def hardware(self) -> float:
        return self.model + self.recompute


def _answer_forward(m: JanusConfig, rows: int, length: int, answer: int) -> tuple[float, float]:
    """(trainable, frozen) forward FLOPs of scoring ``answer`` tokens after a ``length``-token
    image prompt, ``rows`` rows (one image each)."""
    patches = rows * m.num_image_tokens
    trainable = (
        aligner(m.vision.hidden_size, m.text.hidden_size, m.aligner_depth, patches)
        + llm_forward(m.text, rows, length + answer)
        + linear(rows * answer, m.text.hidden_size, m.text.vocab_size)
    )
    return trainable, siglip_forward(m.vision, rows)


def _image_forward(m: JanusConfig, rows: int, length: int) -> float:
    """Forward FLOPs of scoring the I image tokens after a ``length``-token prompt."""
    tokens = m.num_generated_image_tokens
    return (
        aligner(m.vq.embed_dim, m.text.hidden_size, m.aligner_depth, rows * (tokens - 1))
        + llm_forward(m.text, rows, length + tokens - 1)
        + generation_head(m.text.hidden_size, m.vq.num_embeddings, rows * tokens)
    )


def step_flops(shapes: StepShapes, model: JanusConfig, hps: CLIPConfig) -> StepFlops:
    """Analytic FLOPs of one Pair-GRPO step (global, all devices together)."""
    s, m, t = shapes, model, model.text
    h = t.hidden_size
    b_u = s.pairs * s.und_rollouts
    b_g = s.pairs * s.gen_rollouts
    n = s.answer_tokens
    tokens = m.num_generated_image_tokens

    answers = rollout_cost.answer_flops(m, s.pairs, s.und_rollouts, s.und_len, n)
    images = rollout_cost.image_flops(m, s.pairs, s.gen_rollouts, s.gen_len, s.image_cache_segments)
    rewards = vq_decode(m.vq, b_g) + clip_image(hps, b_g) + clip_text(hps, s.pairs)

    image_rows = 2 * b_g if s.guided_logprobs else b_g
    und_trainable, und_frozen = _answer_forward(m, b_u, s.und_len, n)
    gen_trainable = _image_forward(m, image_rows, s.gen_len)
    forward = und_trainable + gen_trainable
    if s.frozen_base:
        attention = llm_attention(t, b_u, s.und_len + n) + llm_attention(
            t, image_rows, s.gen_len + tokens - 1
        )
        backward = forward + attention  # input gradients: dense 1×, attention 2×
    else:
        backward = 2 * forward
    training = s.inner_iterations * (forward + backward + und_frozen)
    # Log-prob chunks are always rematerialised (their logits are recomputed in the backward);
    # the decoder stack only with remat=full.
    heads = linear(b_u * n, h, t.vocab_size) + generation_head(
        h, m.vq.num_embeddings, image_rows * tokens
    )
    stack = llm_forward(t, b_u, s.und_len + n) + llm_forward(t, image_rows, s.gen_len + tokens - 1)
    recompute = s.inner_iterations * (heads + (stack if s.remat_full else 0.0))
    reference = forward + und_frozen if s.reference else 0.0
    return StepFlops(
        answers.prefill,
        answers.decode,
        images.prefill,
        images.decode,
        rewards,
        reference,
        training,
        recompute,
    )


def step_tokens(shapes: StepShapes, model: JanusConfig) -> dict[str, int]:
    """Tokens of one step: ``sampled`` (answer tokens at most, plus image tokens) and ``trained``
    (positions through the teacher-forced forward, per inner iteration)."""
    s = shapes
    b_u = s.pairs * s.und_rollouts
    b_g = s.pairs * s.gen_rollouts
    tokens = model.num_generated_image_tokens
    return {
        "sampled": b_u * s.answer_tokens + b_g * tokens,
        "trained": b_u * (s.und_len + s.answer_tokens) + b_g * (s.gen_len + tokens - 1),
    }


# -- rates ---------------------------------------------------------------------------------------


def per_chip_per_second(amount: float, seconds: float, num_chips: int) -> float:
    """``amount`` (tokens, FLOPs) per second per chip."""
    return amount / (seconds * num_chips)


def mfu(model_flops: float, seconds: float, num_chips: int, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s per chip over the chip's peak."""
    return per_chip_per_second(model_flops, seconds, num_chips) / peak_flops


def perf_metrics(
    step: StepFlops,
    tokens: dict[str, int],
    seconds: float,
    num_chips: int,
    peak_flops: float | None,
) -> dict[str, float]:
    """The ``perf/*`` metrics of one logged step (MFU only when the peak is known)."""
    out = {
        "perf/model_tflops_per_step": step.model / 1e12,
        "perf/tflops_per_s_per_chip": per_chip_per_second(step.model, seconds, num_chips) / 1e12,
        "perf/sampled_tokens_per_s_per_chip": per_chip_per_second(
            tokens["sampled"], seconds, num_chips
        ),
        "perf/trained_tokens_per_s_per_chip": per_chip_per_second(
            tokens["trained"], seconds, num_chips
        ),
    }
    if peak_flops:
        out["perf/mfu"] = mfu(step.model, seconds, num_chips, peak_flops)
    return out
