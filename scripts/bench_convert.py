"""Checkpoint conversion benchmark on a synthetic Janus-Pro checkpoint (random bf16, real layout).

    python scripts/bench_convert.py [--preset janus_pro_1b] [--layout deepseek|transformers]
                                    [--storage bin|safetensors] [--workdir DIR] [--keep]

Writes a checkpoint with every tensor of the preset in the chosen key layout (DeepSeek: with the
fused qkv and the unused attn_pool / codebook_used tensors real files carry; default: one
``pytorch_model.bin``, as deepseek-ai/Janus-Pro-1B ships), then runs ``hf-to-orbax`` and
``orbax-to-hf`` each in a fresh process and prints seconds, MB/s (checkpoint bytes / seconds)
and the peak resident set of that process. For scale it also times a plain file copy of the
checkpoint on the same disk. Target (issue 3): peak RSS < 1.5 × the largest checkpoint file
+ 1 GB.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pairuni_jax.checkpoint import hf_config, hf_writer, janus_mapping  # noqa: E402
from pairuni_jax.checkpoint.convert import abstract_params  # noqa: E402
from pairuni_jax.models.janus import JanusConfig  # noqa: E402

# The unused tensors of a DeepSeek checkpoint (spec/janus.md §3.1), for SigLIP width W.
DEEPSEEK_EXTRAS = {
    "latent": lambda w: (1, 1, w),
    "q.weight": lambda w: (w, w),
    "q.bias": lambda w: (w,),
    "kv.weight": lambda w: (2 * w, w),
    "kv.bias": lambda w: (2 * w,),
    "proj.weight": lambda w: (w, w),
    "proj.bias": lambda w: (w,),
    "norm.weight": lambda w: (w,),
    "norm.bias": lambda w: (w,),
    "mlp.fc1.weight": lambda w: (4 * w, w),
    "mlp.fc1.bias": lambda w: (4 * w,),
    "mlp.fc2.weight": lambda w: (w, 4 * w),
    "mlp.fc2.bias": lambda w: (w,),
}
CHILD = """
import json, resource, sys, time
from convert.janus import main
start = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"code": code, "seconds": seconds, "peak_rss": peak}))
"""


def checkpoint_shapes(config: JanusConfig, layout: str) -> dict[str, tuple[int, ...]]:
    """Key → torch-layout shape of every tensor of ``config`` in ``layout``."""
    import ml_dtypes

    abstract = abstract_params(config, ml_dtypes.bfloat16)
    shapes = {}
    for key, path, layer, leaf in janus_mapping.hf_keys_of(abstract):
        node = abstract
        for p in path:
            node = node[p]
        shape = node.shape[1:] if layer is not None else node.shape
        stand_in = janus_mapping.shape_only(shape)
        shapes[key] = janus_mapping.to_torch_layout(stand_in, leaf).shape
    if layout == "transformers":
        return shapes
    out = {}
    for name, parts in janus_mapping.deepseek_groups(list(shapes)).items():
        stand_ins = [janus_mapping.shape_only(shapes[k]) for k in parts]
        out[name] = janus_mapping.join_deepseek(name, stand_ins).shape
    width = config.vision.hidden_size
    for name, shape in DEEPSEEK_EXTRAS.items():
        out[f"vision_model.vision_tower.attn_pool.{name}"] = shape(width)
    out["gen_vision_model.quantize.codebook_used"] = (65536,)
    return out


def random_bf16(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random finite bf16 values (random bits with the top exponent bit cleared), cheaply."""
    import ml_dtypes

    bits = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16) & np.uint16(0xBFFF)
    return bits.view(ml_dtypes.bfloat16)


def write_synthetic(directory: Path, config: JanusConfig, layout: str, storage: str) -> None:
    import ml_dtypes

    directory.mkdir(parents=True)
    shapes = checkpoint_shapes(config, layout)
    rng = np.random.default_rng(0)
    if storage == "safetensors":
        tensors = [
            hf_writer.OutTensor(k, s, np.dtype(ml_dtypes.bfloat16), lambda s=s: random_bf16(s, rng))
            for k, s in shapes.items()
        ]
        hf_writer.write_checkpoint(directory, tensors, hf_writer.parse_size("5GB"), progress=False)
    else:
        import torch

        state = {
            k: torch.from_numpy(random_bf16(s, rng).view(np.int16)).view(torch.bfloat16)
            for k, s in shapes.items()
        }
        torch.save(state, directory / "pytorch_model.bin")
        del state
    if layout == "transformers":
        hf_config.transformers_config(config, "bfloat16").save_pretrained(directory)
    else:
        text = json.dumps(hf_config.deepseek_config(config, "bfloat16"), indent=2)
        (directory / "config.json").write_text(text)


def files_of(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


def run_child(args: list[str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"conversion failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def report(name: str, stats: dict, nbytes: int, largest: int) -> None:
    target = 1.5 * largest + 2**30
    ok = "below" if stats["peak_rss"] < target else "ABOVE"
    print(
        f"{name:12s} {stats['seconds']:7.1f} s  {nbytes / stats['seconds'] / 1e6:7.0f} MB/s  "
        f"peak RSS {stats['peak_rss'] / 2**30:5.2f} GiB ({ok} target {target / 2**30:.2f} GiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="janus_pro_1b", help="JanusConfig preset")
    parser.add_argument("--layout", choices=("deepseek", "transformers"), default="deepseek")
    parser.add_argument("--storage", choices=("bin", "safetensors"), default="bin")
    parser.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the files written")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_convert_"))
    src, orbax, back = work / "hf", work / "orbax", work / "back"
    try:
        start = time.perf_counter()
        # In a child process, so that this one stays small while the conversions run.
        maker = multiprocessing.get_context("spawn").Process(
            target=write_synthetic,
            args=(src, JanusConfig.preset(args.preset), args.layout, args.storage),
        )
        maker.start()
        maker.join()
        if maker.exitcode != 0:
            raise SystemExit("writing the synthetic checkpoint failed")
        files = files_of(src)
        nbytes, largest = sum(f.stat().st_size for f in files), max(f.stat().st_size for f in files)
        print(
            f"synthetic {args.preset} ({args.layout}, {args.storage}): {nbytes / 1e9:.2f} GB in "
            f"{len(files)} files, largest {largest / 1e9:.2f} GB "
            f"(written in {time.perf_counter() - start:.0f} s)"
        )
        start = time.perf_counter()
        for f in files:
            shutil.copyfile(f, work / f"copy-{f.name}")
        copy = time.perf_counter() - start
        for f in files:
            (work / f"copy-{f.name}").unlink()
        print(f"{'file copy':12s} {copy:7.1f} s  {nbytes / copy / 1e6:7.0f} MB/s  (disk reference)")
        stats = run_child(["hf-to-orbax", str(src), str(orbax)])
        report("hf-to-orbax", stats, nbytes, largest)
        stats = run_child(["orbax-to-hf", str(orbax), str(back), "--format", args.layout])
        report("orbax-to-hf", stats, nbytes, largest)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
