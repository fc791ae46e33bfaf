"""The image towers of ``pairuni data pair`` on tiny converted checkpoints: the Janus SigLIP tower
(transformers ``save_pretrained`` -> ``pairuni convert``) and the HPS CLIP image tower (an
open_clip state dict -> ``pairuni convert hpsv2``), each against its reference; the command end to
end on real image files, its feature cache, and the output training the tiny model."""

import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from convert import hpsv2 as convert_hpsv2
from pairuni_jax import cli
from pairuni_jax.checkpoint import convert
from pairuni_jax.data import images
from pairuni_jax.models.janus import JanusConfig
from pairuni_jax.pairing import features
from pairuni_jax.verify.hps_reference import hps_preprocess
from tests import reference
from tests.clip_reference import TINY, tiny_open_clip

QUESTION = "What colour is it?\nA. red\nB. blue\n\nAnswer with the option's letter from the given choices directly."


def _scene(seed, size=(40, 48)):
    """A smooth random picture (a 4x4 colour grid, bicubic-upsampled), uint8[H, W, 3]."""
    grid = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid).resize(size[::-1], Image.Resampling.BICUBIC))


def _noised(pixels, seed):
    noise = np.random.default_rng(1000 + seed).normal(0, 4, pixels.shape)
    return np.clip(pixels + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Originals o0..o5 and slightly noised copies n0..n5 as PNG files."""
    root = tmp_path_factory.mktemp("pictures")
    (root / "images").mkdir()
    for i in range(6):
        scene = _scene(i)
        Image.fromarray(scene).save(root / "images" / f"o{i}.png")
        Image.fromarray(_noised(scene, i)).save(root / "images" / f"n{i}.png")
    return root


@pytest.fixture(scope="module")
def janus_dir(tmp_path_factory):
    hf_model = reference.tiny_hf_model(JanusConfig.tiny(), seed=0)
    root = tmp_path_factory.mktemp("janus")
    hf_model.save_pretrained(root / "hf")
    return hf_model, convert.hf_to_orbax(root / "hf", root / "orbax", progress=False)


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    model = tiny_open_clip(seed=3)
    root = tmp_path_factory.mktemp("hps")
    state = {k: v.half() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, root / "HPS_tiny.pt")
    assert (
        convert_hpsv2.main([str(root / "HPS_tiny.pt"), str(root / "hps"), "--preset", "tiny"]) == 0
    )
    reference_model = open_clip.model.CLIP(**TINY).eval()
    reference_model.load_state_dict({k: v.float() for k, v in state.items()})
    return reference_model, root / "hps"


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _check_noised_copies_are_nearest(feats):
    """feats: [12, D] for o0..o5 then n0..n5."""
    sims = feats[:6] @ feats[6:].T
    copies = np.diag(sims)
    unrelated = feats[:6] @ feats[:6].T
    assert copies.min() > unrelated[~np.eye(6, dtype=bool)].max()
    assert np.all(np.argmax(sims, axis=0) == np.arange(6))


def test_siglip_features_match_transformers_and_separate_noised_copies(janus_dir, pictures, mesh):
    hf_model, directory = janus_dir
    extractor = features.siglip_extractor(directory, mesh)
    paths = [pictures / "images" / f"{k}{i}.png" for k in "on" for i in range(6)]
    got = features.extract_features(extractor, paths, batch_size=5, progress=False)
    assert got.shape == (12, JanusConfig.tiny().vision.hidden_size)
    pixels = np.stack([images.load_and_preprocess(p, extractor.image_size) for p in paths])
    with torch.no_grad():
        hidden = hf_model.model.vision_model(pixel_values=reference.to_torch_pixels(pixels))
    want = _unit(hidden.last_hidden_state.mean(dim=1).numpy())
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
    _check_noised_copies_are_nearest(got.astype(np.float64))


def test_clip_features_match_open_clip_and_separate_noised_copies(reward_dir, pictures, mesh):
    reference_model, directory = reward_dir
    extractor = features.clip_extractor(directory, mesh)
    square = [_scene(10 + i, size=(224, 224)) for i in range(3)]  # no resize: exact preprocessing
    for i, scene in enumerate(square):
        Image.fromarray(scene).save(pictures / f"square{i}.png")
    got = features.extract_features(
        extractor, [pictures / f"square{i}.png" for i in range(3)], progress=False
    )
    with torch.no_grad():
        want = reference_model.encode_image(torch.stack([hps_preprocess(s) for s in square]))
    np.testing.assert_allclose(got, _unit(want.numpy()), atol=2e-6, rtol=0)
    paths = [pictures / "images" / f"{k}{i}.png" for k in "on" for i in range(6)]
    _check_noised_copies_are_nearest(
        features.extract_features(extractor, paths, progress=False).astype(np.float64)
    )


def _inputs(root):
    """Understanding records on the originals (o0 with a caption: an aligned candidate),
    generation records on the noised copies without completions."""
    und = [
        {"image_path": f"images/o{i}.png", "question": QUESTION, "answer": "A", "tag": "u"}
        for i in range(6)
    ]
    und[0]["prompt"] = "a smooth colour grid"
    gen = [
        {"image_path": f"images/n{i}.png", "prompt": f"colour grid {i}", "tag": "g"}
        for i in range(6)
    ]
    for name, rows in (("und.jsonl", und), ("gen.jsonl", gen)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "und.jsonl", root / "gen.jsonl"


def _pair_argv(und, gen, out, *extra):
    """Every candidate aligned, every nearest neighbour kept: the towers decide the pairs."""
    argv = ["data", "pair", "--understanding", str(und), "--generation", str(gen)]
    argv += ["--out", str(out), "--aligned-selection", "all", "--threshold", "0", "--no-progress"]
    return [*argv, *extra]


def _pairs(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("encoder", ["siglip", "clip"])
def test_pair_command_matches_noised_copies_to_their_originals(
    encoder, janus_dir, reward_dir, pictures, tmp_path, capsys
):
    und, gen = _inputs(pictures)
    tower = (
        ["--model", str(janus_dir[1])]
        if encoder == "siglip"
        else ["--encoder", "clip", "--reward", str(reward_dir[1])]
    )
    out = tmp_path / "pairs.jsonl"
    argv = _pair_argv(und, gen, out, *tower, "--feature-cache")
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "understanding: 6 images in" in printed and "images/s" in printed
    pairs = _pairs(out)
    assert pairs[0]["aligned"] is True and pairs[0]["understand_ann"]["image_path"].endswith(
        "o0.png"
    )
    retrieved = {
        p["generate_ann"]["image_path"][-6:]: p["understand_ann"]["image_path"][-6:]
        for p in pairs[1:]
    }
    assert retrieved == {f"n{i}.png": f"o{i}.png" for i in range(1, 6)}
    assert cli.main(["data", "validate", str(out)]) == 0

    # A second run reads the cached features and writes the same pairs.
    cached = sorted((tmp_path / "pairs.features").glob("*.npy"))
    assert [p.name.split("-")[0] for p in cached] == ["generation", "understanding"]
    assert cli.main([*argv, "--overwrite"]) == 0
    assert "6 features from the cache" in capsys.readouterr().out
    assert _pairs(out) == pairs


def test_pairs_train_the_tiny_model(janus_dir, pictures, tmp_path):
    """The command's output, aligned and bare retrieved pairs alike, is training data."""
    und, gen = _inputs(pictures)
    out = tmp_path / "pairs.jsonl"
    argv = _pair_argv(und, gen, out, "--model", str(janus_dir[1]))
    assert cli.main(argv) == 0
    run_dir = tmp_path / "run"
    overrides = [
        f"run_dir={run_dir}",
        f"data.path={out}",
        "steps=2",
        "checkpoint.every=2",
        "checkpoint.async_save=false",
        "logging.samples_every=100",
        "grpo.rollout.num_und_rollouts=2",
        "grpo.rollout.num_gen_rollouts=2",
        "grpo.rollout.max_new_tokens=8",
        "data.pairs_per_host=4",
    ]
    assert cli.main(["train", *overrides]) == 0
    steps = [
        json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2]
