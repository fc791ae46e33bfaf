"""The Pair-GRPO train step: rollouts, rewards, pair-weighted advantages, loss and update in one jit.

Shape letters: P pairs in the batch, K_u answers and K_g images per pair, B_u = P·K_u and
B_g = P·K_g rollout rows (pair-major: row p·K + k), N answer tokens, I image tokens.

``TrainStep(...)(state, batch, rng) -> (state, metrics, samples)`` runs one compiled program:

1. sample K_u answers per understanding prompt and K_g CFG images per generation prompt (no grad);
2. VQ-decode the images and score both sides (accuracy from token ids, HPS from pixels);
3. group-normalise each side's rewards per pair and scale by the pair weight w_p (``advantages``);
4. for μ inner iterations: gradient of the clipped loss over micro-batches (``lax.scan``,
   exact (sum, denominator) accumulation), then the optax update.

The state is donated. Frozen modules (vision tower and VQ model by default) live in
``state.frozen`` and get no gradient and no optimizer state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pairuni_jax.models import lora
from pairuni_jax.models.janus import Janus
from pairuni_jax.models.vq import to_uint8
from pairuni_jax.rl import advantages as adv_lib
from pairuni_jax.rl import health
from pairuni_jax.rl.loss import Aggregation, LossConfig, aggregate, policy_loss
from pairuni_jax.rl.policy import ImageLogprob, answer_logprobs, image_logprobs
from pairuni_jax.rl.rollout_data import (
    GenerationRollouts,
    SideRollouts,
    StepSamples,
    UnderstandingRollouts,
)
from pairuni_jax.rollout.image import ImageSettings, sample_images
from pairuni_jax.rollout.layout import DecodeLayout, Decoder
from pairuni_jax.rollout.text import TextSettings, sample_text

Array = jax.Array
Batch = dict[str, Array]
# (reward_state, completion_ids [B_u, N], completion_mask [B_u, N], batch, K_u) -> (reward [B_u], parts)
UnderstandingRewardFn = Callable[[Any, Array, Array, Batch, int], tuple[Array, dict[str, Array]]]
# (reward_state, pixels [B_g, s, s, 3] in [-1, 1], image tokens [B_g, I], batch, K_g)
#   -> (reward [B_g], parts)
GenerationRewardFn = Callable[[Any, Array, Array, Batch, int], tuple[Array, dict[str, Array]]]


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How the step samples (``grpo.rollout`` in a run config).

    Attributes:
        num_und_rollouts: K_u, answers sampled per understanding prompt: the size of each
            understanding group (PairUni-1B: 8, 7B: 4). At least 2.
        num_gen_rollouts: K_g, images sampled per generation prompt (the generation group).
        max_new_tokens: N, the answer length buffer; answers stop earlier at EOS.
        text_temperature: divides the answer logits when sampling and when re-scoring.
        top_k: keep the k most likely answer tokens when sampling; 0 = off. The loss re-scores
            with the plain temperature softmax, so keep top-k and top-p off unless you accept
            that off-policy gap.
        top_p: nucleus mass for answer sampling; 1 = off.
        cfg_weight: w, the classifier-free guidance weight of image sampling (1 = conditional
            only); the guided log-probs use it too.
        image_temperature: divides the guided image logits.
        image_cache_segments: ``ImageSettings.cache_segments``: the image decode runs as this
            many loops over a growing KV cache (decode speed vs compile time).
        layout: where the weights the decode loops read live (``rollout.layout``): ``auto``,
            ``train``, ``replicated`` or ``tensor``; ``auto`` takes ``replicated`` when its copy
            fits a quarter of the chip's HBM, else ``tensor`` on a mesh with a tensor axis.
    """

    num_und_rollouts: int = 8
    num_gen_rollouts: int = 8
    max_new_tokens: int = 64
    text_temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_weight: float = 5.0
    image_temperature: float = 1.0
    image_cache_segments: int = 4
    layout: DecodeLayout = DecodeLayout.AUTO

    def __post_init__(self):
        if self.num_und_rollouts < 2 or self.num_gen_rollouts < 2:
            raise ValueError("GRPO needs at least 2 rollouts per group on each side")
        if self.image_cache_segments < 1:
            raise ValueError(f"image_cache_segments must be >= 1, got {self.image_cache_segments}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.cfg_weight >= 0:
            raise ValueError(f"cfg_weight must be >= 0 (1: no guidance), got {self.cfg_weight}")
        for name in ("text_temperature", "image_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """The Pair-GRPO algorithm (``grpo`` in a run config).

    Attributes:
        rollout: how answers and images are sampled.
        loss: the clipped objective, its aggregation and the optional KL term.
        pair_weighting: how a retrieved pair's similarity s becomes its weight w_p (aligned
            pairs weigh 1): ``sqrt`` (PairUni), ``linear`` or ``none``.
        advantage_eps: added to the group's reward std before dividing (A = (r − mean) /
            (std + eps)).
        image_logprob: which image log-probs the loss uses: ``conditional`` (the conditional
            branch alone, T2I-R1) or ``guided`` (through CFG, Janus-Pro-R1).
        understanding_weight: w_u, the weight of the understanding loss in w_u·L_u + w_g·L_g.
        generation_weight: w_g, the weight of the generation loss.
        inner_iterations: μ, optimizer updates per batch of rollouts (the first one is
            on-policy; later ones are clipped against the sampling-time log-probs).
        micro_batches: gradient accumulation inside the step: each side's rows are split into
            this many parts, with exact (sum, denominator) accumulation.
        frozen_modules: top-level Janus modules that get no gradient and no optimizer state.
        logprob_chunk: positions per chunk when re-scoring (the [B, chunk, V] logits of one
            chunk exist at a time, recomputed in the backward).
    """

    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    pair_weighting: adv_lib.PairWeighting = adv_lib.PairWeighting.SQRT
    advantage_eps: float = 1e-4
    image_logprob: ImageLogprob = ImageLogprob.CONDITIONAL
    understanding_weight: float = 1.0
    generation_weight: float = 1.0
    inner_iterations: int = 1
    micro_batches: int = 1
    frozen_modules: tuple[str, ...] = ("vision_model", "vqmodel")
    logprob_chunk: int = 128

    def __post_init__(self):
        if self.inner_iterations < 1 or self.micro_batches < 1:
            raise ValueError("inner_iterations and micro_batches must be >= 1")


@flax.struct.dataclass
class TrainState:
    step: Array  # int32 scalar: optimizer updates done
    params: nnx.State  # trainable policy parameters
    frozen: nnx.State  # frozen policy parameters
    opt_state: Any
    ref_params: nnx.State | None  # the initial trainable params, kept only when kl_beta > 0


def split_policy(
    model: Janus, frozen_modules: tuple[str, ...]
) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, trainable, frozen): parameters under ``frozen_modules`` are frozen, and so is
    every parameter but the adapters of a model with LoRA adapters (``models/lora.py``)."""
    known = set(vars(model))
    if unknown := sorted(set(frozen_modules) - known):
        raise ValueError(f"frozen_modules {unknown} are not modules of Janus")

    def is_frozen(path, _):
        return path[0] in frozen_modules

    if lora.is_adapted(model):
        is_frozen = nnx.Any(is_frozen, nnx.Not(nnx.LoRAParam))
    graphdef, frozen, params = nnx.split(model, is_frozen, ...)
    return graphdef, params, frozen


def init_train_state(
    model: Janus, config: GRPOConfig, optimizer: optax.GradientTransformation
) -> tuple[nnx.GraphDef, TrainState]:
    """The Pair-GRPO state: ``config.frozen_modules`` frozen, a reference copy when β > 0."""
    return new_state(model, config.frozen_modules, optimizer, config.loss.kl_beta > 0)


def new_state(
    model: Janus,
    frozen_modules: tuple[str, ...],
    optimizer: optax.GradientTransformation,
    reference: bool = False,
) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, step-0 state) training all of ``model`` but ``frozen_modules``; ``reference``:
    keep a copy of the initial trainable params (the KL anchor)."""
    graphdef, params, frozen = split_policy(model, frozen_modules)
    ref = jax.tree.map(jnp.copy, params) if reference else None
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        frozen=frozen,
        opt_state=optimizer.init(params),
        ref_params=ref,
    )
    return graphdef, state


def _repeat(x: Array, k: int) -> Array:
    return jnp.repeat(x, k, axis=0)


def _micro(x: Array, m: int) -> Array:
    if x.shape[0] % m:
        raise ValueError(f"{x.shape[0]} rows do not split into {m} micro-batches")
    return x.reshape(m, x.shape[0] // m, *x.shape[1:])


class TrainStep:
    """One jitted Pair-GRPO step. ``reward_state`` (frozen reward params, letter tables) is an
    argument of the compiled program, not a constant, and is not donated."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        config: GRPOConfig,
        optimizer: optax.GradientTransformation,
        text_settings: TextSettings,
        image_settings: ImageSettings,
        understanding_reward: UnderstandingRewardFn,
        generation_reward: GenerationRewardFn,
        reward_state: Any,
        learning_rate: optax.Schedule | None = None,
        skip_nonfinite: bool = False,
        decode_layout: DecodeLayout = DecodeLayout.TRAIN,
    ):
        self.graphdef = graphdef
        self.config = config
        self.optimizer = optimizer
        self.text_settings = text_settings
        self.image_settings = image_settings
        self.understanding_reward = understanding_reward
        self.generation_reward = generation_reward
        self.reward_state = reward_state
        self.learning_rate = learning_rate
        # health.NanPolicy.SKIP_STEP, an argument (not a constant): one program for both policies
        self.skip_nonfinite = np.bool_(skip_nonfinite)
        self.decode_layout = decode_layout  # resolved (never AUTO): rollout.layout.resolve
        self.jitted = jax.jit(self._step, donate_argnums=(0,))

    def __call__(
        self, state: TrainState, batch: Batch, rng: Array
    ) -> tuple[TrainState, dict[str, Array], StepSamples]:
        """One step: the new state, the step's metrics and the rollouts of the batch's first
        pair (``StepSamples``; on the device until a caller reads them)."""
        return self.jitted(*self.arguments(state, batch, rng))

    def lower(self, state, batch, rng):
        """Ahead-of-time lowering (for ``compiled.memory_analysis()`` and cost analysis)."""
        return self.jitted.lower(*self.arguments(state, batch, rng))

    def arguments(self, state: TrainState, batch: Batch, rng: Array) -> tuple:
        """Everything the compiled program takes, in its order."""
        return state, batch, rng, self.reward_state, self.skip_nonfinite

    # -- the program ---------------------------------------------------------------------------

    def _model(self, params: nnx.State, frozen: nnx.State) -> Janus:
        return lora.compute_view(nnx.merge(self.graphdef, params, frozen))

    def _step(
        self, state: TrainState, batch: Batch, rng: Array, reward_state: Any, skip_nonfinite: Array
    ):
        c = self.config
        ku, kg = c.rollout.num_und_rollouts, c.rollout.num_gen_rollouts
        num_pairs = batch["und_input_ids"].shape[0]
        model = self._model(state.params, state.frozen)
        rng_text, rng_image = jax.random.split(jax.random.fold_in(rng, state.step))

        # 1. Rollouts and rewards, outside any gradient. The K samples of a prompt share one
        # prefill; rows come out pair-major (row p·K + k), like the repeated prompts below. The
        # weights the decode loops read are laid out for decoding once, for both rollouts.
        decoder = Decoder(model, self.decode_layout)
        text = sample_text(
            decoder,
            batch["und_input_ids"],
            batch["und_attention_mask"],
            batch["und_pixel_values"],
            None,
            rng_text,
            dataclasses.replace(self.text_settings, samples_per_prompt=ku),
        )
        images = sample_images(
            decoder,
            batch["gen_input_ids"],
            batch["gen_attention_mask"],
            rng_image,
            dataclasses.replace(self.image_settings, samples_per_prompt=kg),
        )
        text, images = jax.lax.stop_gradient((text, images))
        with jax.named_scope("rewards"):  # the scope ``pairuni plan`` counts rewards by
            pixels = jax.lax.stop_gradient(model.decode_image_tokens(images.tokens))
            und_reward, und_parts = self.understanding_reward(
                reward_state, text.tokens, text.mask, batch, ku
            )
            gen_reward, gen_parts = self.generation_reward(
                reward_state, pixels, images.tokens, batch, kg
            )

        # 2. Pair-weighted, group-normalised advantages (PairUni Eq. 3-4).
        weights = adv_lib.pair_weights(
            batch["similarity"], batch["pair_weight_aligned"], c.pair_weighting
        )

        def advantages(reward: Array, k: int) -> Array:
            grouped = reward.reshape(num_pairs, k)
            return adv_lib.weighted_advantages(grouped, weights, c.advantage_eps).reshape(-1)

        und = UnderstandingRollouts(
            prompt_ids=_repeat(batch["und_input_ids"], ku),
            prompt_mask=_repeat(batch["und_attention_mask"], ku),
            pixel_values=_repeat(batch["und_pixel_values"], ku),
            completion=text.tokens,
            mask=text.mask,
            old_logp=text.log_probs,
            advantages=advantages(und_reward, ku),
            ref_logp=None,
        )
        guided = c.image_logprob is ImageLogprob.GUIDED
        gen = GenerationRollouts(
            prompt_ids=_repeat(batch["gen_input_ids"], kg),
            prompt_mask=_repeat(batch["gen_attention_mask"], kg),
            completion=images.tokens,
            mask=jnp.ones(images.tokens.shape, bool),
            old_logp=images.log_probs if guided else images.cond_log_probs,
            advantages=advantages(gen_reward, kg),
            ref_logp=None,
        )
        if c.loss.kl_beta > 0:
            ref_model = self._model(state.ref_params, state.frozen)
            und = und.replace(ref_logp=self._answer_logprobs(ref_model, und)[0])
            gen = gen.replace(ref_logp=self._image_logprobs(ref_model, gen)[0])
        und, gen = jax.lax.stop_gradient((und, gen))

        # 3. μ inner iterations of gradient + update.
        denominators = tuple(
            aggregate(side.mask.astype(jnp.float32), side.mask, c.loss.aggregation)[1]
            for side in (und, gen)
        )

        def iteration(carry, _):
            params, opt_state = carry
            grads, aux = self._gradient(params, state.frozen, und, gen, denominators)
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), (aux, optax.tree.norm(grads))

        (params, opt_state), (aux, grad_norms) = jax.lax.scan(
            iteration, (state.params, state.opt_state), None, length=c.inner_iterations
        )
        aux = jax.tree.map(lambda x: x[0], aux)  # diagnostics of the first (on-policy) iteration
        nonfinite = health.nonfinite_flags(
            (aux["und"]["loss"][0], aux["gen"]["loss"][0]), grad_norms, params
        )
        params, opt_state = health.keep_previous_if_nonfinite(
            nonfinite, skip_nonfinite, (params, opt_state), (state.params, state.opt_state)
        )
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)

        metrics = {
            **_side_metrics("und", und_reward, und_parts, und, aux["und"]),
            **_side_metrics("gen", gen_reward, gen_parts, gen, aux["gen"]),
            "und/completion_length": jnp.mean(text.lengths.astype(jnp.float32)),
            "und/tokens_sampled": jnp.sum(text.lengths).astype(jnp.float32),
            "gen/tokens_sampled": jnp.float32(images.tokens.size),
            "pair_weight_mean": jnp.mean(weights),
            "grad_norm": grad_norms[0],
            **nonfinite,
        }
        if self.learning_rate is not None:
            metrics["learning_rate"] = jnp.asarray(self.learning_rate(state.step), jnp.float32)
        samples = StepSamples(
            images=to_uint8(pixels[:kg]),
            image_rewards=gen_reward[:kg],
            answers=text.tokens[:ku],
            answer_mask=text.mask[:ku],
            answer_rewards=und_reward[:ku],
        )
        return new_state, metrics, samples

    def _answer_logprobs(self, model: Janus, und: UnderstandingRollouts) -> tuple[Array, Array]:
        return answer_logprobs(
            model,
            und.prompt_ids,
            und.prompt_mask,
            und.pixel_values,
            und.completion,
            und.mask,
            self.config.rollout.text_temperature,
            self.config.logprob_chunk,
        )

    def _image_logprobs(self, model: Janus, gen: GenerationRollouts) -> tuple[Array, Array]:
        r = self.config.rollout
        return image_logprobs(
            model,
            gen.prompt_ids,
            gen.prompt_mask,
            gen.completion,
            self.config.image_logprob,
            r.cfg_weight,
            r.image_temperature,
            self.image_settings.pad_id,
            self.config.logprob_chunk,
        )

    def _side_terms(self, logp: Array, entropy: Array, side: SideRollouts) -> dict:
        """(sum, denominator) of the side's loss terms and diagnostics for one micro-batch."""
        terms = policy_loss(
            logp, side.old_logp, side.advantages, side.mask, self.config.loss, side.ref_logp
        )
        terms["entropy"] = aggregate(entropy, side.mask, Aggregation.TOKEN_MEAN)
        gap = jnp.abs(logp - side.old_logp)
        terms["logp_gap"] = aggregate(gap, side.mask, Aggregation.TOKEN_MEAN)
        return terms

    def _gradient(
        self, params, frozen, und: UnderstandingRollouts, gen: GenerationRollouts, denominators
    ):
        """Gradient of w_u·L_u + w_g·L_g, accumulated over micro-batches with global denominators."""
        c = self.config
        m = c.micro_batches
        und_mb = jax.tree.map(lambda x: _micro(x, m), und)
        gen_mb = jax.tree.map(lambda x: _micro(x, m), gen)

        def loss_fn(params, und_part: UnderstandingRollouts, gen_part: GenerationRollouts):
            model = self._model(params, frozen)
            sums = {
                "und": self._side_terms(*self._answer_logprobs(model, und_part), und_part),
                "gen": self._side_terms(*self._image_logprobs(model, gen_part), gen_part),
            }
            loss = c.understanding_weight * sums["und"]["loss"][0] / jnp.maximum(
                denominators[0], 1.0
            ) + c.generation_weight * sums["gen"]["loss"][0] / jnp.maximum(denominators[1], 1.0)
            return loss, sums

        grad_fn = jax.grad(loss_fn, has_aux=True)

        def accumulate(total, parts):
            grads, sums = grad_fn(params, *parts)
            return jax.tree.map(jnp.add, total, (grads, sums)), None

        zero_grads = jax.tree.map(jnp.zeros_like, params)
        zero_sums = jax.tree.map(
            jnp.zeros_like,
            jax.eval_shape(
                lambda: loss_fn(params, *jax.tree.map(lambda x: x[0], (und_mb, gen_mb)))[1]
            ),
        )
        (grads, sums), _ = jax.lax.scan(accumulate, (zero_grads, zero_sums), (und_mb, gen_mb))
        return grads, sums


def _side_metrics(
    side: str, reward: Array, parts: dict[str, Array], rollouts: SideRollouts, aux: dict
) -> dict[str, Array]:
    """``{side}/...`` metrics: reward statistics and parts, advantages, and the loss terms of
    the first inner iteration (``aux``: name → (sum, denominator))."""
    ratio = lambda pair: pair[0] / jnp.maximum(pair[1], 1.0)  # noqa: E731
    metrics = {
        f"{side}/reward_mean": jnp.mean(reward),
        f"{side}/reward_std": jnp.std(reward),
        **{f"{side}/{name}": jnp.mean(values) for name, values in parts.items()},
        f"{side}/advantage_abs_mean": jnp.mean(jnp.abs(rollouts.advantages)),
        f"{side}/advantage_std": jnp.std(rollouts.advantages),
        f"{side}/policy_loss": ratio(aux["loss"]),
    }
    for name in ("clip_fraction", "entropy", "logp_gap", "kl"):
        if name in aux:
            metrics[f"{side}/{name}"] = ratio(aux[name])
    return metrics
