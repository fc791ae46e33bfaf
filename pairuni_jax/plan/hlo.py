"""Reading the optimised HLO of a compiled program: matmul FLOPs and collective bytes per device.

``compiled.cost_analysis()`` counts a loop body once, so on a program made of loops (layer scans,
micro-batch scans, decode loops) it is far too low. ``count_program`` reads ``compiled.as_text()``
instead and multiplies every loop body by its trip count. What it takes care of, because the two
compilers write the same program differently:

- **Trip counts.** XLA:CPU annotates most ``while`` ops with ``known_trip_count``; the TPU
  compiler annotates none. The count is then derived from the loop itself: the loop state's
  scalar elements are evaluated from the ``while`` operand (the initial values), the condition
  computation (a compare against a constant) and the body's update of each element (the
  induction variable's step), iterating until the condition is false. A condition that also
  reads data (``step < N & ~all(done)``: the answer decode stopping on EOS) is counted at its
  bound, the worst case (``Loop.source == "bounded"``).
- **Convolutions.** The TPU compiler writes every matmul, batched or not, as a ``convolution``
  whose batch dimensions are spatial dimensions with ``lhs_dilate`` = window size and a stride
  (so exactly one kernel tap meets a real input per output position), and whole attention
  blocks with padding and kernel reversal. Counting ``window size × features`` per output counts
  the dilation holes too (up to 40× too high); the count here is exact: per spatial dimension,
  the (output, kernel tap) pairs that meet a real input element.
- **Collectives.** A combined collective returns a tuple (one array per operand): its bytes are
  the sum, not the largest. An asynchronous one (``all-gather-start`` / ``-done``, the TPU
  default) is counted once, at ``-done`` (whose type is the result; ``-start`` also carries the
  operands and context scalars).

Everything is per device (the HLO is the SPMD-partitioned program of one device).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from pairuni_jax.plan.hlo_module import (
    CALLED,
    CALLED_LISTS,
    Computation,
    Instruction,
    arrays,
    itemsize,
    parse_module,
)
from pairuni_jax.plan.trip_counts import derive_trip_count

_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_WINDOW = re.compile(r"window=\{([^}]*)\}")
_DIM_LABELS = re.compile(r"dim_labels=(\w+)_(\w+)->(\w+)")
_COLLECTIVES = (
    "all-gather",
    "all-reduce",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
    "ragged-all-to-all",
)
# What one step's ops belong to: ``training`` (under ``jvp``/``transpose``: the forward and
# backward of the loss), ``rewards`` (the ``rewards`` name scope of ``rl.train_step``), or
# ``rollout`` (everything else: sampling, reference forwards). Index of each total in a counts
# vector: FLOPS + phase, BYTES + phase, COUNT + phase.
PHASES = ("rollout", "rewards", "training")
FLOPS, BYTES, COUNT = 0, 3, 6


def phase(op_name: str) -> int:
    if "jvp(" in op_name or "transpose(" in op_name:
        return 2
    return 1 if "/rewards/" in op_name else 0


def _conv_taps(lhs: int, window: int, out: int, stride: int, pad: int, dil_l: int, dil_r: int):
    """(output position, kernel tap) pairs of one spatial dimension that meet a real input."""
    position = np.arange(out)[:, None] * stride + np.arange(window)[None, :] * dil_r - pad
    real = (position >= 0) & (position <= (lhs - 1) * dil_l) & (position % dil_l == 0)
    return int(real.sum())


def _convolution_flops(ins: Instruction, shapes: dict[str, list]) -> float:
    out = arrays(ins.type_text)[0][1]
    lhs_name, rhs_name = ins.operands[:2]
    lhs, rhs = shapes[lhs_name][0][1], shapes[rhs_name][0][1]
    lhs_labels, rhs_labels, out_labels = _DIM_LABELS.search(ins.tail).groups()
    window = dict(
        item.split("=", 1) for item in (_WINDOW.search(ins.tail) or [None, ""])[1].split() if item
    )
    spatial = [c for c in out_labels if c.isdigit()]

    def field(name: str, default: str) -> list[str]:
        return window.get(name, "x".join([default] * len(spatial))).split("x")

    strides, pads = field("stride", "1"), field("pad", "0_0")
    lhs_dilate, rhs_dilate = field("lhs_dilate", "1"), field("rhs_dilate", "1")
    taps = 1
    for i, label in enumerate(spatial):
        taps *= _conv_taps(
            lhs[lhs_labels.index(label)],
            rhs[rhs_labels.index(label)],
            out[out_labels.index(label)],
            int(strides[i]),
            int(pads[i].split("_")[0]),
            int(lhs_dilate[i]),
            int(rhs_dilate[i]),
        )
    batch, features = out[out_labels.index("b")], out[out_labels.index("f")]
    return 2.0 * batch * features * rhs[rhs_labels.index("i")] * taps


def _dot_flops(ins: Instruction, shapes: dict[str, list]) -> float:
    out = arrays(ins.type_text)[0][1]
    lhs_shape = shapes[ins.operands[0]][0][1]
    dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.tail)
    contracted = [lhs_shape[int(d)] for d in dims.group(1).split(",") if d] if dims else []
    return 2.0 * math.prod(out) * math.prod(contracted)


def is_collective(opcode: str) -> bool:
    """A collective that moves data now: a synchronous one, or the ``-done`` of an async one."""
    return opcode in _COLLECTIVES or opcode.removesuffix("-done") in _COLLECTIVES


@dataclasses.dataclass(frozen=True)
class Counts:
    """Matmul FLOPs, collective bytes and collective ops, each split by ``PHASES``."""

    flops: dict[str, float]
    collective_bytes: dict[str, float]
    collectives: dict[str, float]

    @classmethod
    def from_vector(cls, v: np.ndarray) -> Counts:
        def split(i: int) -> dict[str, float]:
            return {name: float(v[i + k]) for k, name in enumerate(PHASES)}

        return cls(split(FLOPS), split(BYTES), split(COUNT))


@dataclasses.dataclass(frozen=True)
class Loop:
    """One ``while`` of the program.

    op_name: its ``op_name`` metadata (the JAX name scope, e.g. ``jit(_step)/answer_decode/while``).
    trips: iterations counted; source: ``known`` (the compiler's ``known_trip_count``),
    ``derived`` (from the loop's own scalar state), ``bounded`` (an upper bound: the condition
    also reads data, like an EOS stop), or ``default`` (nothing sound: ``default_trip_count``).
    per_trip: counts of one iteration of the body (nested loops multiplied in).
    """

    op_name: str
    trips: int
    source: str
    per_trip: Counts


@dataclasses.dataclass(frozen=True)
class ProgramCounts(Counts):
    """Per-device totals of one compiled program, every loop multiplied by its trip count.

    loops: every ``while`` (nested ones included), in program order. unknown_loops: those with
    no sound trip count, each counted ``default_trip_count`` times.
    """

    loops: tuple[Loop, ...] = ()

    @property
    def unknown_loops(self) -> int:
        return sum(loop.source == "default" for loop in self.loops)


def count_program(hlo_text: str, default_trip_count: int) -> ProgramCounts:
    """Reads an optimised HLO module (``compiled.as_text()``)."""
    computations, entry = parse_module(hlo_text)
    memo: dict[str, np.ndarray] = {}
    loops: list[Loop] = []

    def visit(name: str) -> np.ndarray:
        if name in memo:
            return memo[name]
        comp = computations[name]
        totals = np.zeros(9)
        shapes = {ins.name: arrays(ins.type_text) for ins in comp}
        for ins in comp:
            op_name = _OP_NAME.search(ins.tail)
            op_name = op_name.group(1) if op_name else ""
            part = phase(op_name)
            if ins.opcode == "dot":
                totals[FLOPS + part] += _dot_flops(ins, shapes)
            elif ins.opcode == "convolution":
                totals[FLOPS + part] += _convolution_flops(ins, shapes)
            elif is_collective(ins.opcode):
                totals[BYTES + part] += sum(
                    itemsize(d) * math.prod(s) for d, s in arrays(ins.type_text)
                )
                totals[COUNT + part] += 1
            if ins.opcode in ("async-update", "async-done"):  # their computation runs once
                continue
            called = CALLED.findall(ins.tail)
            for group in CALLED_LISTS.findall(ins.tail):
                called += [c.strip().lstrip("%") for c in group.split(",") if c.strip()]
            sub = [visit(c) for c in called if c in computations]
            if not sub:
                continue
            if ins.opcode == "while":
                condition = re.search(r"condition=%?([\w.\-]+)", ins.tail).group(1)
                per_trip = sum(sub, np.zeros(9)) + visit(condition)
                trips, source = _trip_count(computations, comp, ins, default_trip_count)
                loops.append(Loop(op_name, trips, source, Counts.from_vector(per_trip)))
                totals += trips * per_trip
            elif ins.opcode == "conditional":  # one branch runs: the costliest
                totals += max(sub, key=lambda v: v.sum())
            else:
                totals += sum(sub, np.zeros(9))
        memo[name] = totals
        return totals

    totals = visit(entry)
    counts = Counts.from_vector(totals)
    return ProgramCounts(counts.flops, counts.collective_bytes, counts.collectives, tuple(loops))


def _trip_count(
    computations: dict[str, Computation], caller: Computation, loop: Instruction, default: int
) -> tuple[int, str]:
    known = _TRIP_COUNT.search(loop.tail)
    if known:
        return int(known.group(1)), "known"
    trips, bounded = derive_trip_count(computations, caller, loop)
    if trips is None:
        return default, "default"
    return trips, "bounded" if bounded else "derived"
