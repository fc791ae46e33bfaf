"""``pairuni convert hpsv2``: a tiny fp16 ``{'state_dict': ...}`` file to a reward directory, its
errors, the CLIP tokenizer files, and restoring the directory (sharded and not)."""

import jax
import numpy as np
import open_clip
import pytest
import torch
from flax import nnx
from jax.sharding import PartitionSpec as P
from transformers import CLIPTokenizerFast

from convert import hpsv2 as convert_entry
from pairuni_jax import cli
from pairuni_jax.checkpoint import hpsv2, model_dir
from pairuni_jax.commands import convert as convert_command
from pairuni_jax.models.clip import CLIPConfig
from pairuni_jax.rewards import clip_text
from pairuni_jax.rewards.hps import hps_score, load_reward_model, prompt_features
from pairuni_jax.verify.hps_reference import reference_hps
from tests.clip_reference import TINY, tiny_open_clip

TOKENIZER_PROMPTS = [
    "A cat with two horns on its head",
    "",
    "   spaced\tout\n\nprompt   ",
    " ".join(f"word{i}" for i in range(100)),  # far beyond 77 tokens
    "café naïve résumé Ångström ΣΑΣ ß Ünïcode",
    "日本語のテキストと絵文字 🐱🚀",
    "“curly quotes” and ‘single’ — dashes… ﬁligree ＡＢＣ",
    "mojibake: cafÃ© Ã©tÃ©",
    "&amp; &lt;b&gt;bold&lt;/b&gt; &quot;q&quot; &#39;x&#39; &eacute; &amp;amp;",
    "Don't WE'LL they've I'M it'd 3.14 1,000,000 #hashtag @user",
]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The tiny perturbed open_clip model and its fp16 checkpoint file, HPS style."""
    model = tiny_open_clip(seed=3)
    path = tmp_path_factory.mktemp("src") / "HPS_tiny_compressed.pt"
    torch.save({"state_dict": {k: v.half() for k, v in model.state_dict().items()}}, path)
    return model, path


@pytest.fixture(scope="module")
def reward_dir(source, tmp_path_factory):
    _, path = source
    dst = tmp_path_factory.mktemp("dst") / "hps"
    assert convert_entry.main([str(path), str(dst), "--preset", "tiny"]) == 0
    return dst


def test_converted_params_are_the_fp16_tensors_exactly(source, reward_dir):
    model, _ = source
    meta = model_dir.read_config(reward_dir)
    assert meta["kind"] == "hpsv2" and CLIPConfig.from_dict(meta["clip"]) == CLIPConfig.tiny()
    restored = nnx.to_pure_dict(nnx.state(load_reward_model(reward_dir)))
    fp16 = model.state_dict()
    want_qkv = fp16["visual.transformer.resblocks.1.attn.in_proj_weight"].half().float().numpy()
    got_qkv = np.asarray(restored["visual"]["transformer"]["blocks"]["attn"]["qkv"]["kernel"][1])
    np.testing.assert_array_equal(got_qkv.reshape(64, -1).T, want_qkv)
    want_conv = fp16["visual.conv1.weight"].half().float().numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(np.asarray(restored["visual"]["conv1"]["kernel"]), want_conv)
    leaves = jax.tree.leaves(restored)
    assert all(x.dtype == np.float32 for x in leaves)
    assert sum(x.size for x in leaves) == sum(
        v.numel() for k, v in fp16.items() if k != "logit_scale"
    )


def test_converted_model_scores_like_open_clip_parity(source, reward_dir):
    model, _ = source
    reference = open_clip.model.CLIP(**TINY).eval()
    reference.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    tokenizer = clip_text.load_clip_tokenizer(reward_dir)
    prompts = TOKENIZER_PROMPTS[:2]
    ids = clip_text.clip_token_ids(tokenizer, prompts)
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 384, 384, 3)).astype(np.float32)
    want = reference_hps(reference, pixels, ids)
    got = jax.jit(hps_score)(load_reward_model(reward_dir), pixels, text_ids=ids)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


def test_tokenizer_parity_with_open_clip(reward_dir):
    tokenizer = CLIPTokenizerFast.from_pretrained(str(reward_dir))
    assert len(tokenizer) == 49408
    got = clip_text.clip_token_ids(tokenizer, TOKENIZER_PROMPTS)
    want = open_clip.get_tokenizer("ViT-H-14")(TOKENIZER_PROMPTS).numpy()
    assert got.dtype == np.int32 and got.shape == (len(TOKENIZER_PROMPTS), 77)
    np.testing.assert_array_equal(got, want)
    assert got[3, 76] == 49407  # truncated: EOT kept last


def test_sharded_restore(reward_dir, mesh):
    sharded = load_reward_model(reward_dir, mesh)
    state = nnx.state(sharded)
    kernel = state["visual"]["transformer"]["blocks"]["c_fc"]["kernel"][...]
    assert kernel.sharding.spec == P(None, "fsdp", "tensor")
    embedding = state["text"]["token_embedding"]["embedding"][...]
    assert embedding.sharding.spec == P("tensor", "fsdp")
    plain = load_reward_model(reward_dir)
    ids = np.zeros((8, 77), np.int32)
    ids[:, 0], ids[:, 1] = 49406, 49407
    pixels = np.random.default_rng(1).uniform(-1, 1, (8, 384, 384, 3)).astype(np.float32)
    with jax.set_mesh(mesh):
        got = jax.jit(hps_score)(sharded, pixels, text_ids=ids)
    want = jax.jit(hps_score)(plain, pixels, text_ids=ids)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=0)


def test_cli_registration(source, tmp_path, monkeypatch, capsys):
    _, path = source
    modules = (*convert_command.CONVERTER_MODULES, "pairuni_jax.commands.convert_hpsv2")
    monkeypatch.setattr(convert_command, "CONVERTER_MODULES", tuple(dict.fromkeys(modules)))
    dst = tmp_path / "via_cli"
    assert cli.main(["convert", "hpsv2", str(path), str(dst), "--preset", "tiny"]) == 0
    assert (dst / "tokenizer.json").is_file() and (dst / "params").is_dir()
    assert cli.main(["convert", "hpsv2", str(path), str(dst), "--preset", "tiny"]) == 1
    assert "already exists" in capsys.readouterr().err


def _state(model):
    return {k: v.half() for k, v in model.state_dict().items()}


def test_errors_name_the_bad_keys_and_shapes(source, tmp_path):
    model, _ = source
    config = CLIPConfig.tiny()
    state = _state(model)
    del state["visual.ln_post.bias"]
    state["visual.extra.weight"] = torch.zeros(3)
    state["transformer.resblocks.1.mlp.c_fc.weight"] = torch.zeros(7, 48)
    state["visual.proj"] = state["visual.proj"].long()
    with pytest.raises(hpsv2.CheckpointMismatchError) as info:
        hpsv2.convert_state_dict(state, config)
    message = str(info.value)
    assert "missing keys (1): visual.ln_post.bias" in message
    assert "unexpected keys (1): visual.extra.weight" in message
    assert "transformer.resblocks.1.mlp.c_fc.weight: shape [7, 48], expected [192, 48]" in message
    assert "visual.proj: dtype torch.int64, expected floating point" in message

    with pytest.raises(hpsv2.CheckpointMismatchError) as info:
        hpsv2.convert_state_dict(_state(model), CLIPConfig.vit_h_14())
    assert "visual.conv1.weight: shape [64, 3, 14, 14], expected [1280, 3, 14, 14]" in str(
        info.value
    )
    assert "missing keys (" in str(info.value)

    not_a_state_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_a_state_dict)
    with pytest.raises(hpsv2.CheckpointMismatchError, match="expected a state dict"):
        hpsv2.load_torch_state_dict(not_a_state_dict)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        hpsv2.load_torch_state_dict(tmp_path / "absent.pt")


def test_ddp_prefix_and_plain_state_dict(source, tmp_path):
    model, _ = source
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in _state(model).items()}, path)
    state = hpsv2.load_torch_state_dict(path)
    assert "visual.proj" in state and not any(k.startswith("module.") for k in state)
    assert len(hpsv2.expected_keys(CLIPConfig.vit_h_14())) == 685  # 686 minus logit_scale


def test_reward_dir_kind_is_checked(tmp_path):
    other = model_dir.save_model_dir(
        tmp_path / "other", {"w": np.zeros(2, np.float32)}, {"kind": "janus"}
    )
    with pytest.raises(model_dir.NotAModelDirError, match="expected 'hpsv2'"):
        load_reward_model(other)


def test_encode_prompts_matches_in_graph_features(reward_dir):
    model = load_reward_model(reward_dir)
    tokenizer = clip_text.load_clip_tokenizer(reward_dir)
    prompts = TOKENIZER_PROMPTS[:3]
    got = clip_text.encode_prompts(model, tokenizer, prompts, batch_size=2)  # padded last batch
    want = prompt_features(model, clip_text.clip_token_ids(tokenizer, prompts))
    assert got.shape == (3, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-6)


FAMILY = dict(  # ViT-H-14's head widths (vision 80, text 64) at other widths and depths
    embed_dim=24,
    vision_cfg=dict(image_size=224, layers=3, width=160, head_width=80, patch_size=14, mlp_ratio=2),
    text_cfg=dict(context_length=77, vocab_size=49408, width=128, heads=2, layers=1),
)


def test_sizes_come_from_the_tensors(tmp_path, capsys):
    """An open_clip ViT-H-14-family model of other widths converts without a preset, and
    scores like open_clip (so the heads, which the tensors do not show, are right too)."""
    torch.manual_seed(5)
    model = open_clip.model.CLIP(**FAMILY).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    path = tmp_path / "family.pt"
    torch.save({"state_dict": _state(model)}, path)
    dst = tmp_path / "reward"
    assert convert_entry.main([str(path), str(dst)]) == 0
    assert "width 160, 2 heads" in capsys.readouterr().out
    config = CLIPConfig.from_dict(model_dir.read_config(dst)["clip"])
    assert (config.embed_dim, config.vision.width, config.vision.layers) == (24, 160, 3)
    assert (config.vision.heads, config.vision.mlp_dim, config.text.heads) == (2, 320, 2)

    reference = open_clip.model.CLIP(**FAMILY).eval()
    reference.load_state_dict({k: v.float() for k, v in _state(model).items()})
    ids = clip_text.clip_token_ids(clip_text.load_clip_tokenizer(dst), TOKENIZER_PROMPTS[:2])
    pixels = np.random.default_rng(2).uniform(-1, 1, (2, 384, 384, 3)).astype(np.float32)
    got = jax.jit(hps_score)(load_reward_model(dst), pixels, text_ids=ids)
    np.testing.assert_allclose(np.asarray(got), reference_hps(reference, pixels, ids), atol=1e-5)

    assert convert_entry.main([str(path), str(tmp_path / "x"), "--preset", "vit_h_14"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "vision.width 160 (expected 1280)" in err


def test_heads_of_other_head_widths_are_asked_for(source, tmp_path, capsys):
    _, path = source  # TINY: vision head width 16, text 12
    assert convert_entry.main([str(path), str(tmp_path / "a")]) == 1
    assert "--vision-heads" in capsys.readouterr().err
    dst = tmp_path / "b"
    assert (
        convert_entry.main([str(path), str(dst), "--vision-heads", "4", "--text-heads", "4"]) == 0
    )
    assert CLIPConfig.from_dict(model_dir.read_config(dst)["clip"]) == CLIPConfig.tiny()
