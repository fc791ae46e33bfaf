"""``run_verify``: convert a real (or test) checkpoint with the project's converters and compare.

Stages run one after another and free what they loaded, so host memory peaks at about one model,
not two: convert Janus → transformers reference → JAX → (with an HPS file) convert HPS →
open_clip reference → JAX HPS. Both sides get the same token ids and pixels (the project's
prompt builders and Janus preprocessing); what is compared is the models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np

from pairuni_jax.checkpoint import convert, hf_reader, hpsv2, model_dir
from pairuni_jax.data.images import load_and_preprocess, load_image
from pairuni_jax.data.prompts import PromptEncoder, load_tokenizer
from pairuni_jax.dtypes import DType
from pairuni_jax.models.clip import CLIPConfig
from pairuni_jax.models.janus import JanusConfig
from pairuni_jax.verify import hps_checks, janus_checks, janus_jax
from pairuni_jax.verify.checks import Check
from pairuni_jax.verify.golden import GOLDEN_CFG_WEIGHT, GOLDEN_PROMPT, GoldenMode, is_janus_pro_1b
from pairuni_jax.verify.janus_io import JanusInputs
from pairuni_jax.verify.report import VerifyReport
from pairuni_jax.verify.stages import StageMeter

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "verify"
PHOTO = ASSETS / "grace_hopper.jpg"
QUESTION = "Describe this image in detail."
PHOTO_PROMPT = "a portrait photograph of a woman in a naval officer's uniform"
UNRELATED_PROMPT = "a bowl of ripe oranges on a wooden kitchen table"
INSTALL_HINT = "pip install 'pairuni-jax[verify]'"
REFERENCE_DEVICES = ("cpu", "cuda")


class VerifyError(ValueError):
    """Bad input to ``pairuni verify``; the message names the file, flag or library."""


@dataclasses.dataclass(frozen=True)
class VerifyOptions:
    """janus: hub id or checkpoint directory (transformers or DeepSeek layout).
    hps: an HPS v2 / v2.1 ``.pt`` file (open_clip state dict) to check as well, or None;
      hps_config: its architecture (ViT-H-14 for the released files).
    dtype: ``"fp32"`` (judged) or ``"bf16"`` (drift measured) for the JAX side.
    golden: compare with the published Janus-Pro-1B tokens (``auto``) or not (``none``).
    keep: directory for the converted model directories (``janus/``, ``hps/``); None: a
      temporary directory, deleted afterwards.
    perturb_converted: EPS, the self-check's noise scale on one converted LLM weight, or None.
    reference_device: where transformers and open_clip run (``cpu`` or ``cuda``).
    image, question, photo_prompt: the understanding input and the bundled photograph's prompt.
    max_new_tokens: greedy answer length; cfg_weight: image guidance.
    log: stage lines and progress bars on stderr.
    """

    janus: str
    hps: Path | None = None
    hps_config: CLIPConfig = dataclasses.field(default_factory=CLIPConfig.vit_h_14)
    dtype: str = "fp32"
    golden: GoldenMode = GoldenMode.AUTO
    keep: Path | None = None
    perturb_converted: float | None = None
    reference_device: str = "cpu"
    image: Path = PHOTO
    question: str = QUESTION
    photo_prompt: str = PHOTO_PROMPT
    max_new_tokens: int = 32
    cfg_weight: float = GOLDEN_CFG_WEIGHT
    log: bool = True

    def __post_init__(self):
        if self.dtype not in {d.value for d in DType}:
            raise VerifyError(f"--dtype {self.dtype!r}: expected one of {[d.value for d in DType]}")
        if self.reference_device not in REFERENCE_DEVICES:
            raise VerifyError(f"--reference-device {self.reference_device!r}: expected cpu or cuda")
        if self.max_new_tokens < 1:
            raise VerifyError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.perturb_converted is not None and not self.perturb_converted > 0:
            raise VerifyError(f"--perturb-converted must be > 0, got {self.perturb_converted}")


def require_reference_libraries(hps: bool) -> None:
    """PyTorch (and torchvision + open_clip for HPS) are the references; name what is missing."""
    names = ("torch", "transformers") + (("torchvision", "open_clip") if hps else ())
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise VerifyError(
            f"pairuni verify compares against the PyTorch reference implementations and needs "
            f"{', '.join(missing)}, which cannot be imported: {INSTALL_HINT}"
        )


def resolve_source(src: str) -> Path:
    """A local checkpoint directory, or a hub id downloaded with huggingface_hub."""
    try:
        return hf_reader.resolve_source(src)
    except hf_reader.CheckpointError as e:
        if e.__cause__ is None:  # a local path; the hub was not asked
            raise VerifyError(str(e)) from e
        raise VerifyError(
            f"{e}. Without network access, download it where the hub is reachable "
            f"(`hf download {src} --local-dir DIR`), copy DIR here and pass --janus DIR"
        ) from e


@contextlib.contextmanager
def _workspace(keep: Path | None) -> Iterator[Path]:
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="pairuni-verify-") as tmp:
            yield Path(tmp)
    else:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep


def _check_inputs(options: VerifyOptions) -> None:
    """Everything that can be checked before any work starts."""
    if options.keep is not None:
        for name in ("janus", "hps"):
            if (options.keep / name).exists():
                raise VerifyError(
                    f"--keep {options.keep}: {options.keep / name} already exists; "
                    "choose a new directory (verify never overwrites)"
                )
    if options.hps is not None:
        try:  # memory-mapped: reads the keys, not the weights
            hpsv2.load_torch_state_dict(options.hps)
        except (hpsv2.CheckpointMismatchError, FileNotFoundError) as e:
            raise VerifyError(f"--hps {options.hps}: {e}") from e
    if not Path(options.image).is_file():
        raise VerifyError(f"{options.image}: no such image")


def _precision(dtype: str):
    """fp32 means fp32 matmuls (not TF32 on GPUs, not bf16 passes on TPUs)."""
    return jax.default_matmul_precision("highest") if dtype == "fp32" else contextlib.nullcontext()


def _describe(config: JanusConfig) -> str:
    t, v = config.text, config.vision
    sizes = (
        f"LLM {t.hidden_size} wide × {t.num_layers} layers (vocab {t.vocab_size}), SigLIP "
        f"{v.hidden_size} × {v.num_layers}, {config.num_generated_image_tokens} image tokens"
    )
    return sizes + (" — Janus-Pro-1B sizes" if is_janus_pro_1b(config) else "")


def _encoder(directory: Path, config: JanusConfig, source: str) -> PromptEncoder:
    try:
        tokenizer = load_tokenizer(directory)
    except (OSError, ValueError) as e:
        raise VerifyError(
            f"{source}: cannot load its tokenizer files (tokenizer.json, ...): {e}"
        ) from e
    return PromptEncoder(tokenizer, config.num_image_tokens)


def _inputs(encoder: PromptEncoder, config: JanusConfig, options: VerifyOptions) -> JanusInputs:
    return JanusInputs(
        question_ids=encoder.understanding_ids(options.question)[None],
        pixels=load_and_preprocess(options.image, config.vision.image_size)[None],
        image_prompt_ids=encoder.plain_generation_ids(GOLDEN_PROMPT)[None],
        ids=encoder.ids,
        max_new_tokens=options.max_new_tokens,
        cfg_weight=options.cfg_weight,
    )


def run_verify(options: VerifyOptions) -> VerifyReport:
    """Converts, runs both sides, compares; returns the report (``report.failed`` lists failures).

    Raises ``VerifyError`` (and the converters' errors) on bad input, before the long work where
    possible: both conversions run first.
    """
    require_reference_libraries(hps=options.hps is not None)
    _check_inputs(options)
    meter = StageMeter(log=options.log)
    with _workspace(options.keep) as work:
        with meter.stage("resolve and convert Janus"):
            source = resolve_source(options.janus)
            janus_dir = convert.hf_to_orbax(
                source, work / "janus", dtype=options.dtype, progress=options.log
            )
        hps_dir = None
        if options.hps is not None:
            with meter.stage("convert HPS"):
                hps_dir = _convert_hps(options, work / "hps")
        report, generated = _verify_janus(options, meter, source, janus_dir)
        if hps_dir is not None:
            report.checks += _verify_hps(options, meter, hps_dir, generated)
    report.stages = meter.records
    return report


def _verify_janus(
    options: VerifyOptions, meter: StageMeter, source: Path, janus_dir: Path
) -> tuple[VerifyReport, np.ndarray]:
    """The Janus checks; also returns the JAX-generated image float32[S, S, 3] (for HPS)."""
    from pairuni_jax.verify import janus_reference

    config = convert.read_model_config(janus_dir)[0]
    ckpt = hf_reader.HFCheckpoint(source)
    encoder = _encoder(janus_dir, config, options.janus)
    inputs = _inputs(encoder, config, options)
    with meter.stage("transformers: load and run (fp32)", device="torch"):
        reference = janus_reference.load_reference(ckpt, config, options.reference_device)
        want = janus_reference.reference_outputs(reference, inputs)
        del reference
        gc.collect()
    perturbed = None
    with _precision(options.dtype):
        with meter.stage(f"JAX: load ({options.dtype})", device="jax"):
            model = convert.load_model(janus_dir, dtype=DType(options.dtype).dtype)
            if options.perturb_converted is not None:
                key = janus_jax.perturb_(model, options.perturb_converted)
                perturbed = f"{key} (+ {options.perturb_converted:g} × N(0, 1))"
        with meter.stage("JAX: run (includes compilation)", device="jax"):
            got = janus_jax.jax_outputs(model, inputs, want.image_tokens)
        del model
    report = VerifyReport(
        source=options.janus,
        source_format=ckpt.format,
        model=_describe(config),
        dtype=options.dtype,
        backend=jax.default_backend(),
        reference_device=options.reference_device,
        perturbed=perturbed,
        images=janus_checks.side_by_side(got, want),
    )
    report.checks = janus_checks.janus_checks(
        got,
        want,
        inputs,
        config,
        judged=options.dtype == "fp32",
        golden_mode=options.golden,
        decode_text=lambda ids: encoder.tokenizer.decode(ids, skip_special_tokens=True),
    )
    return report, got.own_image


def _convert_hps(options: VerifyOptions, destination: Path) -> Path:
    try:
        directory, _ = hpsv2.convert_hpsv2(options.hps, destination, options.hps_config)
        return directory
    except (hpsv2.CheckpointMismatchError, FileNotFoundError) as e:
        raise VerifyError(f"--hps {options.hps}: {e}") from e


def _verify_hps(
    options: VerifyOptions, meter: StageMeter, hps_dir: Path, generated: np.ndarray
) -> list[Check]:
    """The HPS checks on the bundled photograph and ``generated`` float32[S, S, 3]."""
    from pairuni_jax.rewards import clip_text
    from pairuni_jax.rewards.hps import load_reward_model
    from pairuni_jax.verify import hps_reference

    clip_config = CLIPConfig.from_dict(model_dir.read_config(hps_dir)["clip"])
    context = clip_config.text.context_length
    photo = hps_checks.photo_pixels(np.asarray(load_image(options.image)))
    cases = [
        hps_checks.HPSCase("bundled photograph", photo, options.photo_prompt),
        hps_checks.HPSCase("bundled photograph, unrelated prompt", photo, UNRELATED_PROMPT),
        hps_checks.HPSCase("generated image (JAX)", generated, GOLDEN_PROMPT),
    ]
    prompts = [c.prompt for c in cases] + list(hps_checks.TOKENIZER_PROMPTS)
    with meter.stage("open_clip: load and score (fp32)", device="torch"):
        want_ids = hps_reference.open_clip_token_ids(prompts, context)
        reference = hps_reference.open_clip_model(
            clip_config, hpsv2.load_torch_state_dict(options.hps)
        )
        images = [hps_reference.janus_uint8(c.pixels) for c in cases]
        want = hps_reference.reference_scores(reference, images, want_ids[: len(cases)])
        del reference
        gc.collect()
    dtype = DType(options.dtype).dtype
    with _precision(options.dtype), meter.stage("JAX: HPS load and score", device="jax"):
        reward = load_reward_model(hps_dir, dtype=dtype, param_dtype=dtype)
        tokenizer = clip_text.load_clip_tokenizer(hps_dir)
        got = hps_checks.jax_scores(reward, tokenizer, cases, context)
        got_ids = clip_text.clip_token_ids(tokenizer, prompts, context)
    return hps_checks.hps_checks(
        cases, got, want, got_ids, want_ids, judged=options.dtype == "fp32"
    )
