"""Janus-Pro in Flax equals transformers' JanusForConditionalGeneration (tiny random model, fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from pairuni_jax import sharding
from pairuni_jax.models.janus import Janus, JanusConfig, positions_from_mask
from tests import reference

CONFIG = JanusConfig.tiny()
PAD = 0


@pytest.fixture(scope="module")
def models():
    hf = reference.tiny_hf_model(CONFIG, seed=0)
    return hf, reference.flax_from_hf(hf, CONFIG)


def _batch(seed=0):
    """Two rows, the first left-padded by 3; each holds one image's placeholders."""
    rng = np.random.default_rng(seed)
    p = CONFIG.num_image_tokens
    vocab = CONFIG.text.vocab_size
    rows = []
    for pad in (3, 0):
        text = rng.integers(10, vocab, size=9)
        ids = [PAD] * pad + [1, *text[:4], *([CONFIG.image_token_id] * p), *text[4:]]
        rows.append(ids + [int(t) for t in rng.integers(10, vocab, size=3 - pad)])
    ids = np.array(rows, np.int32)
    mask = np.ones_like(ids, bool)
    mask[0, :3] = False
    pixels = rng.uniform(-1, 1, size=(2, CONFIG.vision.image_size, CONFIG.vision.image_size, 3))
    return ids, mask, pixels.astype(np.float32)


def _hf_text_logits(hf, ids, mask, pixels):
    with torch.no_grad():
        out = hf(
            input_ids=torch.from_numpy(ids).long(),
            pixel_values=reference.to_torch_pixels(pixels),
            attention_mask=torch.from_numpy(mask).long(),
            position_ids=torch.from_numpy(np.asarray(positions_from_mask(mask))).long(),
        )
    return out.logits.numpy()


def _flax_text_logits(model, ids, mask, pixels):
    embeds = model.embed(jnp.asarray(ids), jnp.asarray(pixels))
    hidden, _ = model(embeds, positions_from_mask(mask), jnp.asarray(mask))
    return np.asarray(model.text_logits(hidden))


def test_text_logits_parity_left_padding_and_image(models):
    hf, model = models
    ids, mask, pixels = _batch()
    want = _hf_text_logits(hf, ids, mask, pixels)
    got = _flax_text_logits(model, ids, mask, pixels)
    diff = np.abs(got - want)[mask].max()
    scale = np.abs(want[mask]).max()
    print(f"text logits max|diff| = {diff:.2e} (logit scale {scale:.1f})")
    assert scale > 1.0
    assert diff <= 1e-4 * max(1.0, scale)


def test_vision_features_parity(models):
    hf, model = models
    _, _, pixels = _batch(1)
    with torch.no_grad():
        want = hf.model.get_image_features(reference.to_torch_pixels(pixels)).pooler_output.numpy()
    got = np.asarray(model.image_features(jnp.asarray(pixels)))
    print(f"vision features max|diff| = {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_generation_head_and_aligner_parity(models):
    hf, model = models
    rng = np.random.default_rng(2)
    hidden = rng.normal(size=(2, 5, CONFIG.text.hidden_size)).astype(np.float32)
    tokens = rng.integers(0, CONFIG.vq.num_embeddings, size=(2, 7))
    with torch.no_grad():
        want_logits = hf.model.generation_head(torch.from_numpy(hidden)).numpy()
        want_embeds = hf.prepare_embeddings_for_image_generation(torch.from_numpy(tokens)).numpy()
    got_logits = np.asarray(model.image_logits(jnp.asarray(hidden)))
    got_embeds = np.asarray(model.embed_image_tokens(jnp.asarray(tokens)))
    print(
        f"gen head max|diff| = {np.abs(got_logits - want_logits).max():.2e}, "
        f"gen aligner max|diff| = {np.abs(got_embeds - want_embeds).max():.2e}"
    )
    np.testing.assert_allclose(got_logits, want_logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got_embeds, want_embeds, atol=1e-5, rtol=1e-5)


def test_vq_decode_parity_through_janus(models):
    hf, model = models
    tokens = np.random.default_rng(3).integers(
        0, CONFIG.vq.num_embeddings, size=(2, CONFIG.vq.num_tokens)
    )
    with torch.no_grad():
        want = hf.model.vqmodel.decode(torch.from_numpy(tokens)).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(model.decode_image_tokens(jnp.asarray(tokens)))
    print(f"VQ decode max|diff| = {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_kv_cache_prefill_and_decode_equal_full_forward(models):
    _, model = models
    ids, mask, pixels = _batch(4)
    embeds = model.embed(jnp.asarray(ids), jnp.asarray(pixels))
    positions = positions_from_mask(mask)
    full, _ = model(embeds, positions, jnp.asarray(mask))
    from pairuni_jax.models.llama import KVCache

    cache = KVCache.create(CONFIG.text, batch=2, length=ids.shape[1] + 4, dtype=jnp.float32)
    split = ids.shape[1] - 3
    h1, cache = model(embeds[:, :split], positions[:, :split], jnp.asarray(mask[:, :split]), cache)
    steps = []
    for t in range(split, ids.shape[1]):
        h, cache = model(
            embeds[:, t : t + 1], positions[:, t : t + 1], jnp.asarray(mask[:, t : t + 1]), cache
        )
        steps.append(h)
    cached = jnp.concatenate([h1, *steps], axis=1)
    np.testing.assert_allclose(
        np.asarray(cached)[mask], np.asarray(full)[mask], atol=1e-5, rtol=1e-5
    )
    assert int(cache.index) == ids.shape[1]


@pytest.mark.parametrize("block", [1, 4, 7, 64])
def test_causal_query_blocks_equal_full_attention(block):
    """Query blocks that skip the masked upper triangle give the full attention's outputs at every
    real position (left padding and grouped heads included) and the same gradients."""
    from pairuni_jax.models.llama import causal_attention, dot_product_attention

    rng = np.random.default_rng(8)
    b, s, n, k, d = 3, 11, 4, 2, 8
    q = jnp.asarray(rng.normal(size=(b, s, n, d)), jnp.float32)
    keys = jnp.asarray(rng.normal(size=(b, k, s, d)), jnp.float32)
    values = jnp.asarray(rng.normal(size=(b, k, s, d)), jnp.float32)
    real = np.arange(s)[None] >= np.array([[0], [3], [6]])  # left padding
    mask = jnp.asarray(np.tril(np.ones((s, s), bool))[None] & real[:, None, :])

    def full(q, keys, values):
        return dot_product_attention(q, keys, values, mask)

    def blocked(q, keys, values):
        return causal_attention(q, keys, values, mask, block=block)

    np.testing.assert_allclose(
        np.asarray(blocked(q, keys, values))[real],
        np.asarray(full(q, keys, values))[real],
        atol=1e-6,
        rtol=1e-6,
    )
    weights = jnp.asarray(real, jnp.float32)[:, :, None, None]
    loss = lambda f: lambda *a: jnp.sum(f(*a) * weights * jnp.cos(f(*a)))  # noqa: E731
    for got, want in zip(
        jax.grad(loss(blocked), argnums=(0, 1, 2))(q, keys, values),
        jax.grad(loss(full), argnums=(0, 1, 2))(q, keys, values),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)


def test_unrolled_layers_and_remat_equal_scan(models):
    hf, model = models
    ids, mask, pixels = _batch(5)
    want = _flax_text_logits(model, ids, mask, pixels)
    other = reference.flax_from_hf(hf, CONFIG, scan_layers=False, remat="full")
    got = _flax_text_logits(other, ids, mask, pixels)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_sharded_forward_parity_on_mesh(models, mesh):
    """The same forward passes on a (data=2, fsdp=4) mesh, params and batch sharded."""
    _, model = models
    ids, mask, pixels = _batch(6)
    ids = np.concatenate([ids] * 4)
    mask = np.concatenate([mask] * 4)
    pixels = np.concatenate([pixels] * 4)
    want_text = _flax_text_logits(model, ids, mask, pixels)
    tokens = np.random.default_rng(7).integers(
        0, CONFIG.vq.num_embeddings, size=(8, CONFIG.vq.num_tokens)
    )
    want_pixels = np.asarray(model.decode_image_tokens(jnp.asarray(tokens)))

    sharded = sharding.shard_module(model, mesh)
    kernel = sharded.language_model.layers.mlp.up_proj.kernel[...]
    assert kernel.sharding.spec == sharding.logical_to_spec(("layers", "embed", "mlp"))
    batch_sharding = jax.NamedSharding(mesh, sharding.logical_to_spec(("batch",)))
    put = lambda x: jax.device_put(jnp.asarray(x), batch_sharding)  # noqa: E731

    @nnx.jit
    def forward(m, ids, mask, pixels, tokens):
        embeds = m.embed(ids, pixels)
        hidden, _ = m(embeds, positions_from_mask(mask), mask)
        return m.text_logits(hidden), m.decode_image_tokens(tokens)

    with jax.set_mesh(mesh):
        got_text, got_pixels = forward(sharded, put(ids), put(mask), put(pixels), put(tokens))
    assert len(got_text.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(got_text), want_text, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got_pixels), want_pixels, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 4, 1), (1, 2, 4)])
def test_create_sharded_births_params_on_mesh(shape):
    """Every parameter is born sharded, including with tensor parallelism over 4 devices."""
    mesh = sharding.make_mesh(sharding.MeshConfig(*shape))
    model = sharding.create_sharded(lambda: Janus(CONFIG, rngs=nnx.Rngs(0)), mesh)
    table = model.language_model.embed_tokens.embedding[...]
    assert table.sharding.spec == sharding.logical_to_spec(("vocab", "embed"))
    assert len(table.sharding.device_set) == 8
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
        assert leaf.sharding.mesh.shape == mesh.shape


ATTN_POOL = (
    1024
    + (1024 * 1024 + 1024)
    + (2048 * 1024 + 2048)
    + (1024 * 1024 + 1024)
    + 2048
    + (4096 * 1024 + 4096)
    + (1024 * 4096 + 1024)
)
CODEBOOK_USED = 65536


@pytest.mark.parametrize("preset,total", [("janus_pro_1b", 2.0893e9), ("janus_pro_7b", 7.4204e9)])
def test_parameter_count_matches_spec(preset, total):
    """Spec §1 totals include the unused SigLIP attn_pool head and codebook_used buffer; we drop both."""
    abstract = nnx.eval_shape(lambda: Janus(JanusConfig.preset(preset), rngs=nnx.Rngs(0)))
    count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    print(f"{preset}: {count:,} params (+ {ATTN_POOL + CODEBOOK_USED:,} dropped)")
    assert round((count + ATTN_POOL + CODEBOOK_USED) / 1e5) == round(total / 1e5)
