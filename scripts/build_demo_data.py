"""Builds the bundled synthetic pair set ``pairuni_jax/assets/demo_pairs/`` (deterministic).

Each scene is 1-3 identical shapes of one colour on a plain background, drawn as a 64x64 PNG. A
caption describes it (the generation prompt); multiple-choice questions ask for its colour, shape
or count, with every possible value as an option in a fixed order. Half of the pairs are aligned (one scene on both sides, similarity 1.0), half retrieved
(two different scenes, similarity from the attributes they share, in [0.3, 0.9]).

    python scripts/build_demo_data.py [--out DIR] [--pairs 512] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
COLOURS = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 119, 220),
    "yellow": (240, 200, 20),
    "purple": (148, 80, 189),
    "orange": (255, 127, 14),
}
SHAPES = {"circle": "circles", "square": "squares", "triangle": "triangles"}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
BACKGROUNDS = {"white": (250, 250, 250), "black": (15, 15, 15), "grey": (150, 150, 150)}
INSTRUCTION = "Answer with the option's letter from the given choices directly."
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "pairuni_jax" / "assets" / "demo_pairs"


@dataclasses.dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    count: int
    background: str

    def caption(self, style: int) -> str:
        noun = self.shape if self.count == 1 else SHAPES[self.shape]
        article = "an" if self.colour[0] in "aeiou" else "a"
        things = f"{article if self.count == 1 else COUNT_WORDS[self.count]} {self.colour} {noun}"
        templates = (
            "{} on a {} background",
            "a picture of {} on a plain {} background",
            "a simple drawing of {} on a {} background",
        )
        return templates[style % len(templates)].format(things, self.background)

    def shared(self, other: Scene) -> int:
        return sum(
            getattr(self, f.name) == getattr(other, f.name) for f in dataclasses.fields(self)
        )


ATTRIBUTES = {
    "colour": list(COLOURS),
    "shape": list(SHAPES),
    "count": list(COUNT_WORDS),
    "background": list(BACKGROUNDS),
}


def random_scene(rng: np.random.Generator) -> Scene:
    return Scene(**{name: values[rng.integers(len(values))] for name, values in ATTRIBUTES.items()})


def perturb(scene: Scene, num_changes: int, rng: np.random.Generator) -> Scene:
    """``scene`` with ``num_changes`` attributes set to a different value."""
    changes = {}
    for name in rng.permutation(list(ATTRIBUTES))[:num_changes]:
        others = [v for v in ATTRIBUTES[name] if v != getattr(scene, name)]
        changes[str(name)] = others[rng.integers(len(others))]
    return dataclasses.replace(scene, **changes)


def draw(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """The scene as a 64x64 RGB image: shapes centred in distinct cells of a 2x2 grid.

    Sizes and offsets jitter by a few pixels only, so that at the model's 32 px each shape's
    quarters fall into the four 8 px squares a VQ token covers: a tiny codebook can then spell
    every scene, and a tiny policy can learn to draw one token by token.
    """
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUNDS[scene.background])
    canvas = ImageDraw.Draw(image)
    cell = IMAGE_SIZE // 2
    for slot in sorted(rng.permutation(4)[: scene.count]):
        size = int(rng.integers(20, 25))
        x0 = (slot % 2) * cell + (cell - size) // 2 + int(rng.integers(-1, 2))
        y0 = (slot // 2) * cell + (cell - size) // 2 + int(rng.integers(-1, 2))
        box = (x0, y0, x0 + size - 1, y0 + size - 1)
        fill = COLOURS[scene.colour]
        if scene.shape == "circle":
            canvas.ellipse(box, fill=fill)
        elif scene.shape == "square":
            canvas.rectangle(box, fill=fill)
        else:
            canvas.polygon(
                [(x0 + size // 2, y0), (x0, y0 + size), (x0 + size, y0 + size)], fill=fill
            )
    return image


def question(scene: Scene, kind: str) -> tuple[str, str]:
    """A multiple-choice question about ``kind`` and its answer letter.

    The options are every value of the attribute in one fixed order, so that the answer depends
    on the image alone: a tiny model learns to see the answer long before it could learn to
    read shuffled options."""
    if kind == "colour":
        stem, truth, options = "What colour are the shapes in the image?", scene.colour, COLOURS
    elif kind == "shape":
        stem, truth, options = "Which shape is drawn in the image?", scene.shape, SHAPES
    else:
        stem, truth, options = "How many shapes are in the image?", str(scene.count), "1234"
    options = list(options)
    letters = [chr(ord("A") + i) for i in range(len(options))]
    lines = [f"{letter}. {option}" for letter, option in zip(letters, options, strict=True)]
    text = stem + "\n" + "\n".join(lines) + "\n\n" + INSTRUCTION
    return text, letters[options.index(truth)]


def annotation(scene: Scene, path: str, kind: str, tag: str, rng: np.random.Generator) -> dict:
    text, answer = question(scene, kind)
    prompt = scene.caption(int(rng.integers(0, 3)))
    return {"image_path": path, "prompt": prompt, "question": text, "answer": answer, "tag": tag}


def build(out: Path, num_pairs: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_aligned = num_pairs // 2
    num_retrieved = num_pairs - num_aligned
    scenes = []
    for _ in range(num_aligned + num_retrieved):
        scenes.append(random_scene(rng))
    for j in range(num_retrieved):  # each retrieved partner differs from its scene in 1-4 ways
        scenes.append(perturb(scenes[num_aligned + j], int(rng.integers(1, 5)), rng))
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    paths = []
    for i, scene in enumerate(scenes):
        path = f"images/{i:03d}.png"
        draw(scene, rng).save(out / path, optimize=True)
        paths.append(path)
    kinds = ("colour", "shape", "count")
    records = []
    for i in range(num_aligned):
        records.append(
            {
                "similarity": 1.0,
                "generate_ann": annotation(scenes[i], paths[i], kinds[i % 3], "shapes_gen", rng),
                "understand_ann": annotation(
                    scenes[i], paths[i], kinds[(i + 1) % 3], "shapes_und", rng
                ),
            }
        )
    for j in range(num_retrieved):
        g, u = num_aligned + j, num_aligned + num_retrieved + j
        shared = scenes[g].shared(scenes[u])
        similarity = round(min(0.9, 0.3 + 0.15 * shared + float(rng.uniform(0.0, 0.05))), 3)
        records.append(
            {
                "similarity": similarity,
                "generate_ann": annotation(scenes[g], paths[g], kinds[j % 3], "shapes_gen", rng),
                "understand_ann": annotation(
                    scenes[u], paths[u], kinds[(j + 2) % 3], "shapes_und", rng
                ),
            }
        )
    order = rng.permutation(len(records))
    with (out / "pairs.jsonl").open("w", encoding="utf-8") as f:
        for i in order:
            f.write(json.dumps(records[i], ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(args.out, args.pairs, args.seed)
    print(f"wrote {args.pairs} pairs to {args.out}")


if __name__ == "__main__":
    main()
