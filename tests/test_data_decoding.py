"""Images are decoded in full (pixels, not headers) and converted right; texts are checked for
encodability; empty files are errors; ``on_error: skip`` also covers the map step. Bad inputs
are made the way users' tools make them (PIL saves, a copy cut short, a damaged PNG stream)."""

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer

from pairuni_jax import cli
from pairuni_jax.data import images, pipeline, records

QUESTION = "What is shown?\nA. a circle\nB. a square"


def _record(und_image: str, gen_image: str = "gen.png", prompt: str = "a red circle") -> dict:
    side = {"prompt": prompt, "question": QUESTION, "answer": "A", "tag": "t"}
    return {
        "similarity": 0.5,
        "generate_ann": {**side, "image_path": gen_image},
        "understand_ann": {**side, "image_path": und_image},
    }


def _gradient(size: int = 32) -> np.ndarray:
    x = np.linspace(0, 255, size, dtype=np.float32)
    return np.stack(
        [np.add.outer(x, x) / 2, np.tile(x, (size, 1)), 255 - np.tile(x, (size, 1)).T], -1
    )


@pytest.fixture
def image_dir(tmp_path):
    Image.fromarray(_gradient().astype(np.uint8)).save(tmp_path / "gen.png")
    Image.fromarray(_gradient().astype(np.uint8)).save(tmp_path / "good.jpg", quality=90)
    return tmp_path


def _validate(tmp_path, lines, capsys) -> tuple[int, str]:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(lines))
    code = cli.main(["data", "validate", str(path)])
    return code, capsys.readouterr().out


def test_sixteen_bit_png_is_scaled_to_eight_bits_not_white(tmp_path):
    values = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "depth.png")  # PIL writes a 16-bit grayscale PNG
    assert Image.open(tmp_path / "depth.png").mode == "I;16"
    rgb = np.asarray(images.load_image(tmp_path / "depth.png"))
    expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)
    assert 0.45 < rgb.mean() / 255 < 0.55  # PIL's own convert("RGB") gives nearly all 255


def test_palette_png_decodes_through_its_palette(tmp_path):
    palette_image = Image.fromarray(_gradient().astype(np.uint8)).quantize(colors=6)
    palette_image.save(tmp_path / "palette.png")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    palette = np.asarray(palette_image.getpalette(), np.uint8).reshape(-1, 3)
    expected = palette[np.asarray(palette_image)]
    np.testing.assert_array_equal(np.asarray(images.load_image(tmp_path / "palette.png")), expected)


def test_float_tiff_is_refused_with_a_named_error(tmp_path):
    Image.fromarray(np.random.default_rng(0).random((8, 8), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(images.UnsupportedImageError, match="f.tif: floating-point pixels"):
        images.load_image(tmp_path / "f.tif")


def _corrupt_png_stream(path) -> None:
    """Flips bytes inside the IDAT (compressed pixel) data and rewrites its CRC, as a bad copy
    with a checksum-fixing tool would leave it: headers and checksums are valid."""
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT")
    length = struct.unpack(">I", data[at - 4 : at])[0]
    start = at + 4
    for i in range(start + 10, start + length - 4, 7):
        data[i] ^= 0x5A
    crc = zlib.crc32(bytes(data[at : start + length]))
    data[start + length : start + length + 4] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


def test_validation_decodes_every_pixel(image_dir, capsys):
    full = (image_dir / "good.jpg").read_bytes()
    (image_dir / "cut.jpg").write_bytes(full[: len(full) // 2])  # a copy cut short
    Image.fromarray(_gradient().astype(np.uint8)).save(image_dir / "damaged.png")
    _corrupt_png_stream(image_dir / "damaged.png")
    with Image.open(image_dir / "damaged.png") as damaged:
        damaged.verify()  # what validation used to check: the damage passes it
    lines = [json.dumps(_record(name)) + "\n" for name in ("good.jpg", "cut.jpg", "damaged.png")]
    code, out = _validate(image_dir, lines, capsys)
    assert code == 1
    assert "unreadable_image=2" in out
    assert f"pairs.jsonl:2: understand_ann.image_path: cannot read {image_dir / 'cut.jpg'}" in out
    assert (
        f"pairs.jsonl:3: understand_ann.image_path: cannot read {image_dir / 'damaged.png'}" in out
    )


def test_a_lone_surrogate_is_reported_with_its_field(image_dir, capsys):
    bad = _record("good.jpg", prompt="a cat \ud800 on a mat")
    line = json.dumps(bad) + "\n"  # ensure_ascii spells it as the escape \\ud800, as JSON allows
    assert "\\ud800" in line
    code, out = _validate(image_dir, [json.dumps(_record("good.jpg")) + "\n", line], capsys)
    assert code == 1
    assert "pairs.jsonl:2: generate_ann.prompt: holds the lone surrogate U+D800" in out
    assert "unencodable_text" in out


@pytest.mark.parametrize("content", ["", "\n  \n\t\n"])
def test_an_empty_or_blank_file_is_an_error(tmp_path, capsys, content):
    code, out = _validate(tmp_path, [content], capsys)
    assert code == 1 and "no_records" in out and "empty or only blank lines" in out


def _clip_tokenizer() -> CLIPTokenizer:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[])


def _pipeline(image_dir, on_error, num_workers=0):
    Image.fromarray(_gradient(64).astype(np.uint8)).save(image_dir / "big.png")
    for i in range(6):
        (image_dir / f"u{i}.png").write_bytes((image_dir / "big.png").read_bytes())
    path = image_dir / "pairs.jsonl"
    path.write_text("".join(json.dumps(_record(f"u{i}.png")) + "\n" for i in range(6)))
    config = pipeline.DataConfig.demo(
        path=str(path),
        pairs_per_host=2,
        num_epochs=1,
        read_threads=2,
        on_error=on_error,
        num_workers=num_workers,
    )
    return pipeline.PairPipeline(config, pipeline.TINY_TOKENIZER, _clip_tokenizer())


def _cut(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("num_workers", [0, 1])
def test_skip_covers_images_that_break_after_validation(image_dir, capsys, num_workers):
    """Counted in the process that trains, also when worker processes encode the records."""
    pipe = _pipeline(image_dir, "skip", num_workers)
    _cut(image_dir / "u3.png")  # replaced by a broken copy while training runs
    iterator = pipe.iterator()
    try:
        batches = list(iterator)
    finally:
        iterator.close()
    assert [len(b["record_index"]) for b in batches] == [2, 2], "batches stay full"
    assert 3 not in np.concatenate([b["record_index"] for b in batches])
    assert dict(pipe.map_skips.errors_by_kind) == {"unreadable_image": 1}
    assert "pairs.jsonl:4: understand_ann.image_path" in capsys.readouterr().err


def test_without_skip_a_broken_image_names_its_record(image_dir):
    pipe = _pipeline(image_dir, "raise")
    _cut(image_dir / "u3.png")
    with pytest.raises(records.DataError, match="pairs.jsonl:4: understand_ann.image_path"):
        list(pipe.iterator())
