"""Decode layouts: the replicated and the tensor layout sample the same tokens as one device does,
with the same log-probs; the replicated layout's decode loops move nothing between devices, the
tensor layout's only gather: no matmul's contraction is ever split over devices (no partial sums).

Log-probs agree to float32 rounding, not bit for bit: XLA:CPU picks its matmul kernel by shape
(a [1, 64] x [64, 1024] GEMV, or a [16, 64] x [64, 512] column half, rounds differently from
[16, 64] x [64, 1024] in the last bits, on one device), and the per-device shapes are what a
layout changes. The train layout is left out: its partitioner may split contractions."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pairuni_jax import sharding
from pairuni_jax.models.janus import JanusConfig
from pairuni_jax.plan.hlo import is_collective
from pairuni_jax.plan.hlo_module import parse_module
from pairuni_jax.rollout import layout as layout_lib
from pairuni_jax.rollout.image import ImageSettings, sample_images
from pairuni_jax.rollout.layout import DecodeLayout, Decoder
from pairuni_jax.rollout.text import TextSettings, sample_text
from tests import reference

CONFIG = JanusConfig.tiny()
PAD, BOS, EOS = 0, 1, 2
PROMPTS, SAMPLES = 8, 2
LAYOUTS = (DecodeLayout.REPLICATED, DecodeLayout.TENSOR)


def _prompts(rng, image: bool):
    p = CONFIG.num_image_tokens if image else 0
    seqs = []
    for i in range(PROMPTS):
        text = rng.integers(10, CONFIG.text.vocab_size, size=3 + i % 4)
        seqs.append([BOS, *[CONFIG.image_token_id] * p, *text])
    length = max(map(len, seqs))
    ids = np.full((PROMPTS, length), PAD, np.int32)
    mask = np.zeros(ids.shape, bool)
    for i, seq in enumerate(seqs):
        ids[i, length - len(seq) :] = seq
        mask[i, length - len(seq) :] = True
    return ids, mask


@pytest.fixture(scope="module")
def runs():
    """Tokens, log-probs and compiled program of each layout on a (2, 2, 2) mesh, and of one
    device (no mesh: ``None``)."""
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    hf = reference.tiny_hf_model(CONFIG, seed=3)
    reference.perturb_(hf.model.generation_head, seed=101, scale=0.7)
    model = reference.flax_from_hf(hf, CONFIG)
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(0)
    und_ids, und_mask = _prompts(rng, image=True)
    gen_ids, gen_mask = _prompts(rng, image=False)
    size = CONFIG.vision.image_size
    pixels = rng.uniform(-1, 1, (PROMPTS, size, size, 3)).astype(np.float32)
    text = TextSettings(eos_id=EOS, pad_id=PAD, max_new_tokens=6, samples_per_prompt=SAMPLES)
    image = ImageSettings(pad_id=PAD, cfg_weight=1.5, samples_per_prompt=SAMPLES, cache_segments=1)
    inputs = [jnp.asarray(x) for x in (und_ids, und_mask, pixels, gen_ids, gen_mask)]

    def rollouts(state, und_ids, und_mask, pixels, gen_ids, gen_mask, layout):
        decoder = Decoder(nnx.merge(graphdef, state), layout)
        key_text, key_image = jax.random.split(jax.random.key(7))
        answers = sample_text(decoder, und_ids, und_mask, pixels, None, key_text, text)
        images = sample_images(decoder, gen_ids, gen_mask, key_image, image)
        return answers, images

    jitted = jax.jit(rollouts, static_argnums=6)
    out = {None: jax.tree.map(np.asarray, jitted(state, *inputs, DecodeLayout.TRAIN))}
    batch = jax.NamedSharding(mesh, sharding.logical_to_spec(("batch",)))
    sharded_state = jax.device_put(state, sharding.state_shardings(state, mesh))
    sharded_inputs = [jax.device_put(x, batch) for x in inputs]
    with jax.set_mesh(mesh):
        for layout in LAYOUTS:
            compiled = jitted.lower(sharded_state, *sharded_inputs, layout).compile()
            answers, images = jax.tree.map(np.asarray, compiled(sharded_state, *sharded_inputs))
            out[layout] = (answers, images, compiled.as_text())
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_decode_layouts_sample_what_one_device_samples_bit_for_bit(runs, layout):
    want_text, want_image = runs[None]
    text, image, _ = runs[layout]
    assert len({tuple(t) for t in want_image.tokens}) > PROMPTS  # samples differ: not vacuous
    for got, want in ((text, want_text), (image, want_image)):
        for name in got.__dataclass_fields__:
            if name.endswith("log_probs"):
                np.testing.assert_allclose(
                    getattr(got, name), getattr(want, name), rtol=2e-5, atol=2e-5, err_msg=name
                )
            else:
                np.testing.assert_array_equal(getattr(got, name), getattr(want, name), name)


def _decode_collectives(hlo_text: str) -> dict[str, list[str]]:
    """Opcodes of the collectives inside each decode loop's body (nested computations too)."""
    computations, _ = parse_module(hlo_text)

    def collectives(name: str) -> list[str]:
        found = []
        for ins in computations[name]:
            if is_collective(ins.opcode):
                found.append(ins.opcode)
            for called in re.findall(r"(?:calls|to_apply|body)=%?([\w.\-]+)", ins.tail):
                found += collectives(called) if called in computations else []
        return found

    out = {"answer_decode": [], "image_decode": []}
    for comp in computations.values():
        for ins in comp:
            for scope in out:
                if ins.opcode == "while" and f"/{scope}/" in ins.tail:
                    out[scope] += collectives(re.search(r"body=%?([\w.\-]+)", ins.tail)[1])
    return out


def test_replicated_decode_loops_move_nothing_and_tensor_loops_only_gather(runs):
    assert _decode_collectives(runs[DecodeLayout.REPLICATED][2]) == {
        "answer_decode": [],
        "image_decode": [],
    }
    tensor = _decode_collectives(runs[DecodeLayout.TENSOR][2])
    for scope, opcodes in tensor.items():
        assert opcodes, scope  # the tensor layout does gather activations per token
        assert {op.removesuffix("-done") for op in opcodes} == {"all-gather"}, (scope, opcodes)


def test_layout_checks_and_auto_choice():
    mesh = {"data": 1, "fsdp": 4, "tensor": 2}
    with pytest.raises(ValueError, match="layout=replicated splits rollout rows over"):
        layout_lib.check(DecodeLayout.REPLICATED, CONFIG, mesh, {"answer rows": 12})
    with pytest.raises(ValueError, match="mesh.tensor=4, which does not divide"):
        layout_lib.check(DecodeLayout.TENSOR, CONFIG, {"data": 1, "fsdp": 2, "tensor": 4}, {})
    seven_b = JanusConfig.janus_pro_7b()
    copy = layout_lib.copy_bytes(seven_b, DecodeLayout.REPLICATED, mesh, jnp.bfloat16)
    assert 13e9 < copy < 15e9  # about 7B parameters read by the loops, in bf16

    def auto(hbm, mesh=mesh, rows=64):
        rows = {"answer rows": rows}
        return layout_lib.resolve(DecodeLayout.AUTO, seven_b, mesh, jnp.bfloat16, hbm, rows)

    assert auto(95 * 2**30) is DecodeLayout.REPLICATED  # v5p
    assert auto(95 * 2**30, rows=12) is DecodeLayout.TENSOR  # 12 rows split 4 ways, not 8
    assert auto(16 * 2**30, {"data": 1, "fsdp": 16, "tensor": 4}) is DecodeLayout.TENSOR  # v5e
    assert auto(16 * 2**30, {"data": 1, "fsdp": 16, "tensor": 1}) is DecodeLayout.TRAIN
    assert auto(None) is DecodeLayout.REPLICATED  # CPU: HBM unknown
