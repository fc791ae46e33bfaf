"""The Grain input pipeline: pair JSONL -> fixed-shape numpy batches for the train step.

Order of operations (one global order, then one slice per host)::

    valid records --shuffle(seed; reshuffled each epoch)--> repeat(num_epochs)
      --> global batches of G pairs (whole ones only) --> this host's rows of each (``HostSlice``)
      --> map(PairEncoder: image + prompts + HPS tokens) --> threads / worker processes
      --> drop records that failed to encode (on_error="skip") --> batch(P)

Global batch ``s`` is positions ``[s * G, (s + 1) * G)`` of the global order whatever the number of
hosts; a host reads only its rows of it (``HostSlice.rows``, the rows its devices hold), so every
pair is read by one host and a step sees the same pairs in the same rows on 1 host or 16 (a record
dropped in the map step is replaced by the host's next row, so a step with a dropped record
differs).

Every record is validated once when the pipeline is built (``records.scan_jsonl``: images decoded
in full, plus the tokenized-length limits); ``on_error="skip"`` leaves bad records out of the
order and counts them in ``PairPipeline.report``. Every host scans the whole file, so all hosts
agree on the record list. A record that fails only in the map step (an image changed after the
scan, a text the tokenizer rejects) raises with its file and line, or under ``on_error="skip"``
is dropped and counted in ``PairPipeline.map_skips`` (``data.skipping``).

Batch (numpy; P = ``pairs_per_host``, Lu / Lg = ``max_und_len`` / ``max_gen_len``,
S = ``image_size``):

- ``und_input_ids int32[P, Lu]``: BOS + understanding prompt with the image placeholder expanded to
  ``<begin_of_image> + N x <image_placeholder> + <end_of_image>``, left-padded with the pad id;
  ``und_attention_mask bool[P, Lu]`` (True on real tokens);
- ``und_pixel_values float32[P, S, S, 3]`` in [-1, 1] (``images.preprocess_image``);
- ``und_answer int32[P]``: the answer letter's index (0 for "A"); ``und_num_options int32[P]``;
- ``gen_input_ids int32[P, Lg]``: BOS + generation prompt ending in ``<begin_of_image>``,
  left-padded; ``gen_attention_mask bool[P, Lg]``;
- ``hps_input_ids int32[P, 77]``: the generation prompt in the HPS (CLIP) tokenizer;
- ``similarity float32[P]``; ``pair_weight_aligned bool[P]`` (aligned pair: weight 1);
- ``record_index int32[P]``: 0-based line number of the record in the JSONL (line - 1);
- with ``generation_images``: ``gen_pixel_values float32[P, Sg, Sg, 3]``, the generation side's
  image at ``generation_image_size`` Sg (the target a supervised warm start teaches,
  ``pairuni sft``).

The iterator is a ``grain.DatasetIterator``: ``get_state()`` returns a small JSON-able dict and
``set_state(state)`` on a fresh iterator of the same pipeline resumes with exactly the next batch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from pairuni_jax.data import images, prompts, records, skipping

HPS_CONTEXT_LENGTH = 77
ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEMO_PAIRS = ASSETS / "demo_pairs" / "pairs.jsonl"
TINY_TOKENIZER = ASSETS / "tiny_tokenizer"

HpsTokenize = Callable[[Sequence[str]], Any]  # texts -> int array [len(texts), 77]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Input pipeline settings.

    Attributes:
      path: the pair JSONL file.
      pairs_per_host: P, pairs in one host's batch.
      max_und_len: Lu, understanding prompt length in tokens (image tokens included).
      max_gen_len: Lg, generation prompt length in tokens.
      image_size: S, the understanding image side in pixels (384 for Janus-Pro).
      num_image_tokens: N, tokens per image (576 for Janus-Pro).
      image_root: directory relative image paths resolve against (default: the JSONL's).
      on_error: "raise" stops at the first bad record; "skip" leaves it out and counts it.
      seed: shuffle seed in [0, 2**32).
      num_epochs: passes over the data; None repeats forever.
      num_workers: worker processes for loading (0: in the main process).
      read_threads: threads per process that prepare batches.
      prefetch_batches: batches prepared ahead per process.
      system_prompt: the understanding system prompt.
      generation_images: also load each generation side's image (``gen_pixel_values``).
      generation_image_size: the side those images are loaded at (the VQ's image size, which
        may differ from the understanding encoder's); None: ``image_size``.
    """

    path: str
    pairs_per_host: int
    max_und_len: int
    max_gen_len: int
    image_size: int = 384
    num_image_tokens: int = 576
    image_root: str | None = None
    on_error: records.OnError = "raise"
    seed: int = 0
    num_epochs: int | None = None
    num_workers: int = 0
    read_threads: int = 4
    prefetch_batches: int = 4
    system_prompt: str = prompts.SYSTEM_PROMPT
    generation_images: bool = False
    generation_image_size: int | None = None

    def __post_init__(self):
        positive = (
            "pairs_per_host",
            "max_und_len",
            "max_gen_len",
            "image_size",
            "num_image_tokens",
            "read_threads",
            "prefetch_batches",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.generation_image_size is not None and self.generation_image_size < 1:
            raise ValueError(
                f"data.generation_image_size must be >= 1 or None, got {self.generation_image_size}"
            )
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"data.num_epochs must be >= 1 or None, got {self.num_epochs}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"data.seed must be in [0, 2**32), got {self.seed}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"data.on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if self.max_und_len < self.num_image_tokens + 3:
            raise ValueError(
                f"data.max_und_len={self.max_und_len} cannot hold BOS and the "
                f"{self.num_image_tokens} image tokens with their delimiters"
            )

    @classmethod
    def demo(cls, **overrides: Any) -> DataConfig:
        """The bundled synthetic pairs at the tiny model's sizes (64 px images, 16 tokens)."""
        values = dict(
            path=str(DEMO_PAIRS),
            pairs_per_host=4,
            max_und_len=128,
            max_gen_len=32,
            image_size=64,
            num_image_tokens=16,
        )
        return cls(**(values | overrides))


@dataclasses.dataclass(frozen=True)
class HostSlice:
    """The rows of every global batch that one host reads.

    Attributes:
      global_pairs: G, pairs in one global batch (all hosts together).
      rows: this host's rows of it, ascending, in ``[0, G)``; row ``j`` of the host's batch ``s``
        is position ``s * G + rows[j]`` of the global order.
    """

    global_pairs: int
    rows: tuple[int, ...]

    def __post_init__(self):
        rows = list(self.rows)
        if not rows or rows != sorted(set(rows)) or rows[0] < 0 or rows[-1] >= self.global_pairs:
            raise ValueError(
                f"HostSlice rows must be ascending, distinct and in [0, {self.global_pairs}), "
                f"got {self.rows}"
            )

    @classmethod
    def block(cls, index: int, count: int, pairs_per_host: int) -> HostSlice:
        """Host ``index`` of ``count`` reading rows ``[index * P, (index + 1) * P)``."""
        if not 0 <= index < count:
            raise ValueError(f"host index {index} not in [0, {count})")
        start = index * pairs_per_host
        return cls(pairs_per_host * count, tuple(range(start, start + pairs_per_host)))


class HostRowsDataset(grain.MapDataset):
    """A host's rows of each global batch of ``parent`` (the global order): element ``i`` is
    ``parent[(i // P) * G + rows[i % P]]``; a last, partial global batch is left out."""

    def __init__(self, parent: grain.MapDataset, host: HostSlice):
        super().__init__(parent)
        self.host = host
        self._length = len(parent) // host.global_pairs * len(host.rows)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        batch, row = divmod(index, len(self.host.rows))
        return self._parent[batch * self.host.global_pairs + self.host.rows[row]]

    def __str__(self) -> str:
        return f"HostRowsDataset(G={self.host.global_pairs}, rows={list(self.host.rows)})"


class PairSource:
    """Grain ``RandomAccessDataSource`` over the indexed valid records of one JSONL file."""

    def __init__(self, index: records.LineIndex, base: Path):
        self.index = index
        self.base = base
        self._file = index.file.open("rb")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> records.PairRecord:
        offset, length = int(self.index.offsets[i]), int(self.index.lengths[i])
        raw = os.pread(self._file.fileno(), length, offset)  # thread-safe, no shared seek
        record, issues = records.parse_record(
            raw, file=self.index.file, line=int(self.index.lines[i]), base=self.base
        )
        if issues:
            raise records.DataError(issues)
        return record

    def position_of_line(self, line: int) -> int:
        """The source position of the record on 1-based ``line``; KeyError if not a valid one."""
        at = int(np.searchsorted(self.index.lines, line))
        if at == len(self.index) or self.index.lines[at] != line:
            raise KeyError(f"{self.index.file}:{line} is not a valid record")
        return at

    def __getstate__(self) -> dict[str, Any]:
        return {"index": self.index, "base": self.base}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["index"], state["base"])

    def __repr__(self) -> str:  # grain prints sources in its debug output
        return f"PairSource({self.index.file}, {len(self)} records)"


class ClipTokenize:
    """``texts -> int32[len(texts), 77]`` with a Hugging Face CLIP tokenizer, laid out like
    open_clip: SOT + tokens + EOT, truncated to 77 keeping EOT last, zero-padded."""

    def __init__(self, tokenizer: Any, context_length: int = HPS_CONTEXT_LENGTH):
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.context_length)
        out = np.zeros((len(texts), self.context_length), dtype=np.int32)
        for row, ids in zip(out, encoded["input_ids"], strict=True):
            row[: len(ids)] = ids
        return out


def resolve_hps_tokenizer(spec: Any) -> HpsTokenize:
    """The HPS prompt tokenizer from a directory of HF tokenizer files, an HF tokenizer object,
    or any callable ``texts -> int[len(texts), 77]`` (e.g. ``open_clip.get_tokenizer(...)``)."""
    from transformers import PreTrainedTokenizerBase

    if isinstance(spec, str | Path):
        return ClipTokenize(prompts.load_tokenizer(spec))
    if isinstance(spec, PreTrainedTokenizerBase):
        return ClipTokenize(spec)
    if callable(spec):
        return spec
    raise TypeError(f"expected a tokenizer directory, tokenizer or callable, got {type(spec)}")


class PairEncoder(grain.transforms.Map):
    """One validated record -> one batch row (the arrays of the module docstring, without P)."""

    def __init__(self, config: DataConfig, tokenizer: Any, hps_tokenize: HpsTokenize):
        self.config = config
        self.prompts = prompts.PromptEncoder(
            tokenizer, config.num_image_tokens, config.system_prompt
        )
        self.hps_tokenize = hps_tokenize

    def check(self, record: records.PairRecord) -> list[records.Issue]:
        """Tokenizer issues of ``record`` (``UNTOKENIZABLE_TEXT``, ``PROMPT_TOO_LONG``)."""
        cfg = self.config
        try:
            und = len(self._understanding_ids(record))
            gen = len(self._generation_ids(record))
            self._hps_ids(record)
        except records.DataError as e:
            return e.issues
        issues = []
        if und > cfg.max_und_len:
            message = (
                f"the understanding prompt is {und} tokens (with {cfg.num_image_tokens + 2} "
                f"image tokens), more than the maximum {cfg.max_und_len}"
            )
            issues.append(self._too_long(record, "understand_ann.question", message))
        if gen > cfg.max_gen_len:
            message = (
                f"the generation prompt is {gen} tokens, more than the maximum {cfg.max_gen_len}"
            )
            issues.append(self._too_long(record, "generate_ann.prompt", message))
        return issues

    @staticmethod
    def _too_long(record: records.PairRecord, field: str, message: str) -> records.Issue:
        kind = records.ErrorKind.PROMPT_TOO_LONG
        return records.Issue(kind, record.file, record.line, field, message)

    def _understanding_ids(self, record: records.PairRecord) -> np.ndarray:
        field, kind = "understand_ann.question", records.ErrorKind.UNTOKENIZABLE_TEXT
        encode = self.prompts.understanding_ids
        return skipping.located(record, field, kind, encode, record.understand.question)

    def _generation_ids(self, record: records.PairRecord) -> np.ndarray:
        field, kind = "generate_ann.prompt", records.ErrorKind.UNTOKENIZABLE_TEXT
        return skipping.located(
            record, field, kind, self.prompts.generation_ids, record.generate.prompt
        )

    def _hps_ids(self, record: records.PairRecord) -> np.ndarray:
        field, kind = "generate_ann.prompt", records.ErrorKind.UNTOKENIZABLE_TEXT
        hps = np.asarray(
            skipping.located(record, field, kind, self.hps_tokenize, [record.generate.prompt])
        )
        if hps.shape != (1, HPS_CONTEXT_LENGTH):
            raise ValueError(
                f"the HPS tokenizer returned shape {hps.shape} for one text, "
                f"expected (1, {HPS_CONTEXT_LENGTH})"
            )
        return hps

    def map(self, record: records.PairRecord) -> dict[str, np.ndarray] | skipping.SkippedRecord:
        """The batch row of ``record``; a ``DataError`` (file, line, field) if it cannot be
        encoded, or under ``on_error="skip"`` a ``SkippedRecord`` in its place."""
        try:
            return self._encode(record)
        except records.DataError as e:
            if self.config.on_error != "skip":
                raise
            return skipping.SkippedRecord(e.issues[0])

    def _encode(self, record: records.PairRecord) -> dict[str, np.ndarray]:
        cfg, ids = self.config, self.prompts.ids
        und_ids, und_mask = prompts.left_pad(
            self._understanding_ids(record), cfg.max_und_len, ids.pad
        )
        gen_ids, gen_mask = prompts.left_pad(self._generation_ids(record), cfg.max_gen_len, ids.pad)
        pixels = self._pixels(record, "understand_ann", record.understand.image_path)
        hps = self._hps_ids(record)
        return {
            "und_input_ids": und_ids,
            "und_attention_mask": und_mask,
            "und_pixel_values": pixels,
            "und_answer": np.int32(record.understand.answer_index),
            "und_num_options": np.int32(len(record.understand.options)),
            "gen_input_ids": gen_ids,
            "gen_attention_mask": gen_mask,
            "hps_input_ids": hps[0].astype(np.int32),
            "similarity": np.float32(record.similarity),
            "pair_weight_aligned": np.bool_(record.aligned),
            "record_index": np.int32(record.line - 1),
        } | (
            {
                "gen_pixel_values": self._pixels(
                    record,
                    "generate_ann",
                    record.generate.image_path,
                    cfg.generation_image_size or cfg.image_size,
                )
            }
            if cfg.generation_images
            else {}
        )

    def _pixels(
        self, record: records.PairRecord, side: str, path: Path, size: int | None = None
    ) -> np.ndarray:
        """``side``'s image at ``size`` (default ``image_size``); unreadable: located DataError."""
        field, kind = f"{side}.image_path", records.ErrorKind.UNREADABLE_IMAGE
        load = images.load_and_preprocess
        return skipping.located(record, field, kind, load, path, size or self.config.image_size)


class PairPipeline:
    """Scans and validates the pair file once, then builds per-host Grain datasets.

    Args:
      config: the data settings.
      tokenizer: the Janus tokenizer (object, or a directory of HF tokenizer files).
      hps_tokenizer: see ``resolve_hps_tokenizer``.

    Attributes:
      report: the ``records.ValidationReport`` of the scan (skipped records counted by kind).
      map_skips: records dropped in the map step under ``on_error="skip"``, counted by kind.
      source: the ``PairSource`` of valid records.
    """

    def __init__(self, config: DataConfig, tokenizer: Any, hps_tokenizer: Any):
        if isinstance(tokenizer, str | Path):
            tokenizer = prompts.load_tokenizer(tokenizer)
        self.config = config
        self.encoder = PairEncoder(config, tokenizer, resolve_hps_tokenizer(hps_tokenizer))
        index, self.report = records.scan_jsonl(
            config.path,
            image_root=config.image_root,
            on_error=config.on_error,
            extra_check=self.encoder.check,
        )
        if len(index) == 0:
            raise ValueError(f"{config.path} has no valid pair records\n{self.report.summary()}")
        self.source = PairSource(index, records.image_base(config.path, config.image_root))
        self.map_skips = skipping.DropSkipped()

    def record(self, record_index: int) -> records.PairRecord:
        """The record a batch's ``record_index`` entry refers to (for logs and sample files)."""
        return self.source[self.source.position_of_line(record_index + 1)]

    def dataset(self, host: HostSlice | None = None) -> grain.IterDataset:
        """This host's batches: its ``host`` rows of each global batch (default: the block of
        this JAX process, ``HostSlice.block(process_index, process_count, pairs_per_host)``)."""
        cfg = self.config
        if host is None:
            process = grain.sharding.ShardByJaxProcess()
            host = HostSlice.block(process.shard_index, process.shard_count, cfg.pairs_per_host)
        if len(host.rows) != cfg.pairs_per_host:
            raise ValueError(
                f"this host reads {len(host.rows)} rows of each global batch, "
                f"but data.pairs_per_host = {cfg.pairs_per_host}"
            )
        ds = grain.MapDataset.source(self.source).shuffle(seed=cfg.seed).repeat(cfg.num_epochs)
        if len(ds) < host.global_pairs:
            raise ValueError(
                f"{len(self.source)} valid records x {cfg.num_epochs} epochs "
                f"do not fill one global batch of {host.global_pairs} pairs"
            )
        ds = HostRowsDataset(ds, host).map(self.encoder)
        rows_ahead = cfg.prefetch_batches * cfg.pairs_per_host
        ds = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=rows_ahead)
        )
        if cfg.num_workers > 0:
            _mark_absl_flags_parsed()
            ds = ds.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=cfg.num_workers, per_worker_buffer_size=rows_ahead
                )
            )
        # Skipped records are dropped (and counted) in this process, so batches stay full.
        return ds.filter(self.map_skips).batch(cfg.pairs_per_host, drop_remainder=True)

    def iterator(self, host: HostSlice | None = None) -> grain.DatasetIterator:
        """A checkpointable iterator over ``dataset(host)`` (``get_state`` / ``set_state``)."""
        return iter(self.dataset(host))


def _mark_absl_flags_parsed() -> None:
    """Grain's worker pool reads an absl flag, which raises unless flags were parsed; pairuni
    does not use absl.app, so mark them parsed (all defaults) unless a program already did."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
