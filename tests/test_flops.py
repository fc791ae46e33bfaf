"""The analytic FLOP model against parameter counts and against what XLA compiles."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from pairuni_jax import flops
from pairuni_jax.models import cost
from pairuni_jax.models.clip import CLIP, CLIPConfig
from pairuni_jax.models.llama import LlamaConfig, LlamaModel
from pairuni_jax.models.siglip import SiglipConfig, SiglipVisionModel
from pairuni_jax.models.vq import VQConfig, VQModel
from pairuni_jax.plan.hlo import count_program

SMALL = LlamaConfig(
    vocab_size=512,
    hidden_size=256,
    intermediate_size=688,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
    max_position_embeddings=512,
)
ROWS, LENGTH = 2, 128


def _compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile()


def _llm_forward_fn(scan_layers: bool):
    model = nnx.eval_shape(lambda: LlamaModel(SMALL, scan_layers=scan_layers, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)

    def forward(state, embeds):
        positions = jnp.broadcast_to(jnp.arange(LENGTH), (ROWS, LENGTH))
        mask = jnp.ones((ROWS, LENGTH), bool)
        return nnx.merge(graphdef, state)(embeds, positions, mask)[0]

    return model, forward, state, jnp.zeros((ROWS, LENGTH, SMALL.hidden_size))


def test_llm_forward_is_two_flops_per_parameter_and_token_plus_attention():
    model, *_ = _llm_forward_fn(scan_layers=True)
    layer_params = sum(x.size for x in jax.tree.leaves(nnx.state(model.layers)))
    tokens = ROWS * LENGTH
    attention = 4 * SMALL.num_layers * SMALL.num_heads * SMALL.head_dim * ROWS * LENGTH**2
    expected = 2 * layer_params * tokens + attention
    analytic = cost.llm_forward(SMALL, ROWS, LENGTH)
    assert abs(analytic - expected) <= 0.05 * expected
    # The norms are the only parameters the matmul count leaves out.
    assert layer_params - SMALL.num_layers * cost.llm_layer_params(SMALL) == (
        2 * SMALL.num_layers * SMALL.hidden_size
    )


def test_llm_forward_matches_xla():
    analytic = cost.llm_forward(SMALL, ROWS, LENGTH)
    # cost_analysis() counts a loop body once, so compare it with the unrolled layers; it also
    # counts elementwise work (norms, RoPE, softmax), hence the looser bound.
    _, forward, state, embeds = _llm_forward_fn(scan_layers=False)
    xla = _compiled(forward, state, embeds).cost_analysis()["flops"]
    assert abs(xla - analytic) <= 0.2 * analytic, (xla, analytic)
    # The compiled-program reader multiplies the scanned layer body by its trip count and counts
    # matmuls only: it agrees with the analytic count closely.
    _, forward, state, embeds = _llm_forward_fn(scan_layers=True)
    counted = count_program(_compiled(forward, state, embeds).as_text(), 1)
    assert counted.flops["training"] == 0
    assert counted.flops["rollout"] == pytest.approx(analytic, rel=0.01)


def _matmul_flops(factory, fn, *inputs) -> float:
    """Matmul FLOPs of ``fn(module, *inputs)`` as compiled (the module is never materialised)."""
    graphdef, state = nnx.split(nnx.eval_shape(factory))
    compiled = _compiled(lambda s, *x: fn(nnx.merge(graphdef, s), *x), state, *inputs)
    return count_program(compiled.as_text(), 1).flops["rollout"]


def test_vision_towers_vq_decoder_and_hps_match_the_compiled_matmuls():
    siglip = SiglipConfig.tiny()
    counted = _matmul_flops(
        lambda: SiglipVisionModel(
            siglip, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0)
        ),
        lambda m, x: m(x),
        jnp.zeros((3, siglip.image_size, siglip.image_size, 3)),
    )
    assert counted == pytest.approx(cost.siglip_forward(siglip, 3), rel=0.01)

    vq = VQConfig.tiny()
    counted = _matmul_flops(
        lambda: VQModel(vq, rngs=nnx.Rngs(0)),
        lambda m, t: m.decode_tokens(t),
        jnp.zeros((2, vq.num_tokens), jnp.int32),
    )
    assert counted == pytest.approx(cost.vq_decode(vq, 2), rel=0.01)

    clip = CLIPConfig.tiny()
    size = clip.vision.image_size
    counted = _matmul_flops(
        lambda: CLIP(clip, rngs=nnx.Rngs(0)),
        lambda m, x: m.encode_image(x),
        jnp.zeros((2, size, size, 3)),
    )
    assert counted == pytest.approx(cost.clip_image(clip, 2), rel=0.01)
    counted = _matmul_flops(
        lambda: CLIP(clip, rngs=nnx.Rngs(0)),
        lambda m, t: m.encode_text(t),
        jnp.zeros((3, cost.HPS_TEXT_LENGTH), jnp.int32),
    )
    assert counted == pytest.approx(cost.clip_text(clip, 3), rel=0.01)


def test_chip_lookup_by_device_kind():
    assert flops.chip_for_device_kind("TPU v5 lite").name == "v5e"
    assert flops.chip_for_device_kind("TPU v5p").name == "v5p"
    assert flops.chip_for_device_kind("TPU v5").name == "v5p"
    assert flops.chip_for_device_kind("TPU v6 lite").name == "v6e"
    assert flops.chip_for_device_kind("TPU v4").name == "v4"
    assert flops.chip_for_device_kind("NVIDIA H100 80GB HBM3").name == "h100"
    assert flops.chip_for_device_kind("NVIDIA H200").name == "h200"
    assert flops.chip_for_device_kind("cpu") is None


def test_perf_metrics():
    step = flops.StepFlops(1e15, 1e15, 0.0, 0.0, 0.0, 0.0, 2e15, 5e14)
    assert step.rollout == 2e15 and step.model == 4e15 and step.hardware == 4.5e15
    out = flops.perf_metrics(step, {"sampled": 8000, "trained": 16000}, 2.0, 4, 1e15)
    assert out["perf/mfu"] == pytest.approx(0.5)
    assert out["perf/tflops_per_s_per_chip"] == pytest.approx(500.0)
    assert out["perf/sampled_tokens_per_s_per_chip"] == pytest.approx(1000.0)
    assert out["perf/trained_tokens_per_s_per_chip"] == pytest.approx(2000.0)
    assert "perf/mfu" not in flops.perf_metrics(step, {"sampled": 1, "trained": 1}, 1.0, 1, None)
