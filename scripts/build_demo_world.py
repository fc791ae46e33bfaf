"""Builds the demo world that ``pairuni train`` (no arguments) learns in: deterministic, seeded.

Three stages, each reading the previous one's output (build the pairs first:
``scripts/build_demo_data.py``):

1. ``vq``: a tiny VQ (16 px images, 4 x 4 tokens, 128 codes) trained as an autoencoder on the
   demo images (``pairuni_jax.demo.vq_autoencoder``) -> ``WORK/vq`` (an Orbax params dir).
2. ``reward``: a tiny CLIP of the HPS architecture trained contrastively on (image, caption) of
   the demo pairs, each image both as drawn and as the VQ reconstructs it
   (``pairuni_jax.demo.clip_contrastive``) -> ``OUT/demo_reward`` (a reward directory with its
   CLIP tokenizer, restricted to the demo words).
3. ``policy``: a random tiny Janus holding the trained VQ, its vision tower pretrained on the
   demo images' attributes (``pairuni_jax.demo.vision_pretrain``), then warm-started by
   ``pairuni sft`` with that tower frozen: on the generation images alone, then on answers and
   images for a short while, so that RL has room -> ``OUT/demo_policy`` (a model dir).

``report`` prints how well the shipped policy does before RL: sampled answer accuracy and the
mean HPS of its guided images, on every pair.

    nice -n 10 python scripts/build_demo_world.py [--stage all|vq|reward|policy|report]
        [--work build/demo_world] [--out pairuni_jax/assets]

Run with the package importable (``pip install -e .``, or ``PYTHONPATH=.``). The reward stage
needs open-clip-torch's BPE file (the test extras) for the CLIP vocabulary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from build_demo_data import ATTRIBUTES, COUNT_WORDS, SHAPES  # scripts/, the scenes' vocabulary
from flax import nnx

from pairuni_jax.checkpoint import convert as janus_convert
from pairuni_jax.checkpoint import model_dir
from pairuni_jax.checkpoint.hpsv2 import REWARD_KIND, save_clip_tokenizer
from pairuni_jax.data import images as image_lib
from pairuni_jax.data.pipeline import DEMO_PAIRS, TINY_TOKENIZER
from pairuni_jax.demo.clip_contrastive import CLIPTrainConfig, train_clip
from pairuni_jax.demo.vision_pretrain import VisionTrainConfig, pretrain_vision
from pairuni_jax.demo.vq_autoencoder import VQTrainConfig, train_vq
from pairuni_jax.models.clip import CLIPConfig, TextConfig, VisionConfig
from pairuni_jax.models.janus import Janus, JanusConfig
from pairuni_jax.models.llama import LlamaConfig
from pairuni_jax.models.random_init import random_module
from pairuni_jax.models.siglip import SiglipConfig
from pairuni_jax.models.vq import VQConfig, VQModel
from pairuni_jax.rewards.clip_text import clip_token_ids, load_clip_tokenizer
from pairuni_jax.rewards.hps import hps_score
from pairuni_jax.rl.optimizer import OptimizerConfig
from pairuni_jax.run_config import ASSETS, ModelSection
from pairuni_jax.sft import SFTConfig, SFTRunConfig, run_sft

ROOT = Path(__file__).resolve().parents[1]
COUNT_WORDS_INV = {word: n for n, word in COUNT_WORDS.items()}
IMAGE_SIZE = 16  # the VQ's (generated) images and the reward CLIP's input
VQ = VQConfig(
    num_embeddings=128,
    embed_dim=8,
    latent_channels=32,
    base_channels=16,
    channel_multiplier=(1, 2, 2),
    num_res_blocks=1,
    num_groups=8,
    image_size=IMAGE_SIZE,
)
VQ_TRAIN = VQTrainConfig(steps=600, continuous_steps=150, batch_size=32, seed=0)
CLIP_TRAIN = CLIPTrainConfig(steps=600, batch_size=64, seed=0)
POLICY = JanusConfig(
    text=LlamaConfig.tiny(),
    vision=SiglipConfig.tiny(),
    vq=VQ,
    image_token_id=3,  # `<image_placeholder>` in the bundled tiny tokenizer
)
POLICY_INIT_SEED = 0
VISION_TRAIN = VisionTrainConfig(steps=400, batch_size=64, seed=0)
SFT_STEPS = (300, 60)  # images alone, then answers and images
SFT_PAIRS = 16
SFT_LEARNING_RATE = 2e-3  # constant: a longer run passes through the same models


def demo_annotations(pairs: Path = DEMO_PAIRS) -> list[tuple[Path, str]]:
    """(image path, caption) of every image the pairs name, once each, in file order."""
    seen: dict[Path, str] = {}
    with pairs.open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            for side in ("generate_ann", "understand_ann"):
                ann = record[side]
                seen.setdefault(pairs.parent / ann["image_path"], ann["prompt"])
    return sorted(seen.items())


def load_images(paths: list[Path]) -> np.ndarray:
    """float32[N, 16, 16, 3] in [-1, 1], as the data pipeline prepares them."""
    return np.stack([image_lib.load_and_preprocess(p, IMAGE_SIZE) for p in paths])


# -- 1. the VQ -----------------------------------------------------------------------------------


def build_vq(work: Path) -> None:
    paths = [path for path, _ in demo_annotations()]
    model = train_vq(VQ, load_images(paths), VQ_TRAIN)
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
    meta = {"kind": "vq", "vq": VQ.to_dict(), "train": dataclasses.asdict(VQ_TRAIN)}
    model_dir.save_model_dir(work / "vq", params, meta, overwrite=True)


def load_vq(work: Path) -> VQModel:
    abstract = nnx.eval_shape(lambda: VQModel(VQ, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, model_dir.restore_params(work / "vq", target))
    return nnx.merge(graphdef, state)


# -- 2. the reward CLIP --------------------------------------------------------------------------

ATTRIBUTE_WORDS = re.compile(
    r"\b(one|two|three|red|green|blue|yellow|purple|orange|circles?|squares?|triangles?|"
    r"white|black|grey)\b"
)


def scene_key(caption: str) -> str:
    """The scene a caption describes, whatever its template: its attribute words in order."""
    return " ".join(ATTRIBUTE_WORDS.findall(caption.lower()))


def build_reward(work: Path, out: Path) -> None:
    paths, captions = zip(*demo_annotations())
    words = sorted({w for c in captions for w in re.findall(r"[a-z]+", c.lower())})
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        files = save_clip_tokenizer(tokenizer_dir, words=words)
        tokenizer = load_clip_tokenizer(tokenizer_dir)
        config = CLIPConfig(
            embed_dim=32,
            vision=VisionConfig(
                image_size=IMAGE_SIZE, patch_size=4, width=64, layers=2, heads=4, mlp_dim=256
            ),
            text=TextConfig(vocab_size=len(tokenizer), width=32, layers=2, heads=4, mlp_dim=128),
        )
        drawn = load_images(list(paths))
        vq = load_vq(work)
        decode = nnx.jit(lambda m, x: m.decode_tokens(m.encode(x)))
        rebuilt = np.concatenate(
            [
                np.asarray(decode(vq, jnp.asarray(drawn[i : i + 64])))
                for i in range(0, len(drawn), 64)
            ]
        )
        ids = clip_token_ids(tokenizer, list(captions))
        keys = np.unique([scene_key(c) for c in captions], return_inverse=True)[1]
        model = train_clip(
            config,
            np.concatenate([drawn, rebuilt]),
            np.concatenate([ids, ids]),
            np.concatenate([keys, keys]),
            CLIP_TRAIN,
        )
        params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
        meta = {
            "kind": REWARD_KIND,
            "clip": config.to_dict(),
            "source": "scripts/build_demo_world.py",
        }
        model_dir.save_model_dir(out / "demo_reward", params, meta, files, overwrite=True)
    score = nnx.jit(lambda m, x, t: hps_score(m, x, text_ids=t))
    rng = np.random.default_rng(0)
    for name, pixels in (("drawn", drawn), ("VQ-rebuilt", rebuilt)):
        own = np.asarray(score(model, jnp.asarray(pixels), jnp.asarray(ids)))
        shuffled = jnp.asarray(ids[rng.permutation(len(ids))])
        other = np.asarray(score(model, jnp.asarray(pixels), shuffled))
        print(
            f"HPS of {name} images: own caption {own.mean():.3f}, a random one {other.mean():.3f}"
        )


# -- 3. the warm-started policy ------------------------------------------------------------------


def scene_attributes(caption: str) -> list[int]:
    """The value index of each of ``ATTRIBUTES`` (colour, shape, count, background) that a demo
    caption names."""
    words = caption.lower().split()
    singular = [w.removesuffix("s") if w.removesuffix("s") in SHAPES else w for w in words]
    count = next((COUNT_WORDS_INV[w] for w in words if w in COUNT_WORDS_INV), 1)
    values = {"shape": next(w for w in singular if w in SHAPES), "count": count}
    for name in ("colour", "background"):
        values[name] = next(w for w in words if w in ATTRIBUTES[name])
    return [ATTRIBUTES[name].index(values[name]) for name in ATTRIBUTES]


def build_policy(work: Path, out: Path, steps: tuple[int, int] = SFT_STEPS) -> None:
    """A random tiny Janus with the trained VQ and a vision tower pretrained on the demo
    images' attributes, then ``pairuni sft`` with the tower frozen: ``steps[0]`` updates on the
    images alone, then ``steps[1]`` on answers and images, stopped while answers are still
    often wrong."""
    policy = random_module(lambda: Janus(POLICY, rngs=nnx.Rngs(0)), POLICY_INIT_SEED)
    nnx.update(policy.vqmodel, nnx.state(load_vq(work)))
    paths, captions = zip(*demo_annotations())
    pixels = np.stack([image_lib.load_and_preprocess(p, POLICY.vision.image_size) for p in paths])
    labels = np.array([scene_attributes(c) for c in captions])
    sizes = tuple(len(values) for values in ATTRIBUTES.values())
    accuracy = pretrain_vision(policy.vision_model, pixels, labels, sizes, VISION_TRAIN)
    print(f"vision tower, last batch accuracy per attribute: {accuracy.round(3)}", file=sys.stderr)
    model_path = work / "policy_init"
    janus_convert.save_model(policy, model_path, tokenizer_dir=TINY_TOKENIZER, overwrite=True)
    phases = (("policy_images", steps[0], 0.0), ("demo_policy", steps[1], 1.0))
    for name, phase_steps, understanding_weight in phases:
        dst = work / name if name != "demo_policy" else out / name
        config = SFTRunConfig(
            out=str(dst),
            steps=phase_steps,
            log_every=25,
            model=ModelSection(path=str(model_path)),
            data=dataclasses.replace(SFTRunConfig().data, pairs_per_host=SFT_PAIRS),
            sft=SFTConfig(
                uncond_fraction=0.1,
                understanding_weight=understanding_weight,
                frozen_modules=("vqmodel", "vision_model"),
            ),
            optimizer=OptimizerConfig(learning_rate=SFT_LEARNING_RATE, total_steps=phase_steps),
        )
        for row in run_sft(config, overwrite=True):
            print(json.dumps(row), file=sys.stderr, flush=True)
        model_path = dst


def report(work: Path, out: Path, steps: int = 16) -> None:
    """The demo's starting point: the RL step's own metrics over ``steps`` batches at a
    negligible learning rate (sampled accuracy, HPS of CFG images), and its sample grid."""
    from pairuni_jax.run_config import load_run_config
    from pairuni_jax.train import Trainer

    run_dir = work / "report"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # this script's own scratch run
    overrides = [
        f"run_dir={run_dir}",
        f"steps={steps}",
        "optimizer.learning_rate=1.0e-12",
        f"checkpoint.every={steps}",
        f"logging.samples_every={steps}",
        f"model.path={out / 'demo_policy'}",
        f"reward.path={out / 'demo_reward'}",
    ]
    history = Trainer(load_run_config([], overrides)).run_steps()
    for key in ("und/accuracy", "gen/reward_mean", "gen/reward_std", "und/entropy", "gen/entropy"):
        values = np.array([row[key] for row in history])
        print(f"{key}: {values.mean():.4f} ± {values.std() / np.sqrt(len(values)):.4f}")
    print(f"sample grid: {run_dir / 'samples'}")


STAGES = {"vq": build_vq, "reward": build_reward, "policy": build_policy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["all", *STAGES, "report"], default="all")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "demo_world")
    parser.add_argument("--out", type=Path, default=ASSETS)
    parser.add_argument(
        "--sft-steps",
        type=int,
        nargs=2,
        default=SFT_STEPS,
        help="supervised steps on images alone, then on answers and images",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage in ("all", "vq"):
        build_vq(args.work)
    if args.stage in ("all", "reward"):
        build_reward(args.work, args.out)
    if args.stage in ("all", "policy"):
        build_policy(args.work, args.out, tuple(args.sft_steps))
    if args.stage in ("all", "report"):
        report(args.work, args.out)


if __name__ == "__main__":
    main()
