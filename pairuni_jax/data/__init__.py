"""Pair data: the JSONL record format and its validation, Janus prompts and image preprocessing,
and the Grain pipeline that turns pair files into the train step's batches."""

from pairuni_jax.data.images import load_and_preprocess, load_image, preprocess_image
from pairuni_jax.data.pipeline import (
    DEMO_PAIRS,
    TINY_TOKENIZER,
    ClipTokenize,
    DataConfig,
    PairEncoder,
    PairPipeline,
    PairSource,
    resolve_hps_tokenizer,
)
from pairuni_jax.data.prompts import (
    PromptEncoder,
    SpecialIds,
    generation_prompt,
    left_pad,
    load_tokenizer,
    render_chat,
    understanding_prompt,
)
from pairuni_jax.data.records import (
    DataError,
    ErrorKind,
    Issue,
    PairRecord,
    ValidationReport,
    option_letters,
    scan_jsonl,
)

__all__ = [
    "DEMO_PAIRS",
    "TINY_TOKENIZER",
    "ClipTokenize",
    "DataConfig",
    "DataError",
    "ErrorKind",
    "Issue",
    "PairEncoder",
    "PairPipeline",
    "PairRecord",
    "PairSource",
    "PromptEncoder",
    "SpecialIds",
    "ValidationReport",
    "generation_prompt",
    "left_pad",
    "load_and_preprocess",
    "load_image",
    "load_tokenizer",
    "option_letters",
    "preprocess_image",
    "render_chat",
    "resolve_hps_tokenizer",
    "scan_jsonl",
    "understanding_prompt",
]
