"""Reading the optimised HLO of a compiled program: matmul FLOPs and collective bytes per device.

``compiled.cost_analysis()`` counts a loop body once, so on a program made of loops (layer scans,
micro-batch scans, decode loops) it is far too low. ``count_program`` reads ``compiled.as_text()``
instead and multiplies every loop body by its trip count.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.*)$")
_ARRAY = re.compile(r"(pred|[suf]\d+|bf16|f8\w*|c64|c128|token)\[([\d,]*)\]")
_CALLED = re.compile(r"(?:calls|to_apply|body|true_computation|false_computation)=%?([\w.\-]+)")
_CALLED_LISTS = re.compile(r"(?:branch_computations|called_computations)=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_COLLECTIVES = (
    "all-gather",
    "all-reduce",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
    "ragged-all-to-all",
)
_BYTES = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16, "token": 0}


def _itemsize(dtype: str) -> float:
    if dtype in _BYTES:
        return _BYTES[dtype]
    if dtype.startswith("f8"):
        return 1
    return int(re.sub(r"\D", "", dtype)) / 8


def _arrays(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (dtype, tuple(int(d) for d in dims.split(",") if d))
        for dtype, dims in _ARRAY.findall(type_text)
    ]


def _split_type(rest: str) -> tuple[str, str]:
    """``TYPE opcode(...)...`` -> (TYPE, the rest); a tuple TYPE is parenthesised."""
    if not rest.startswith("("):
        type_text, _, tail = rest.partition(" ")
        return type_text, tail
    depth = 0
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return rest[: i + 1], rest[i + 2 :]
    raise ValueError(f"unbalanced HLO type in {rest[:200]!r}")


@dataclasses.dataclass
class ProgramCounts:
    """Per-device totals of one compiled program, loops multiplied by their trip counts.

    flops: matmul and convolution FLOPs, split into ``rollout`` (no gradient) and ``training``
    (ops under ``jvp``/``transpose``: the forward and backward of the loss). collective_bytes:
    bytes produced by collectives, same split. unknown_loops: while loops without a static trip
    count (the answer decode, which stops on EOS), each counted ``default_trip_count`` times.
    """

    flops: dict[str, float]
    collective_bytes: dict[str, float]
    unknown_loops: int


def count_program(hlo_text: str, default_trip_count: int) -> ProgramCounts:
    """Reads an optimised HLO module (``compiled.as_text()``)."""
    computations: dict[str, list[tuple[str, str, str]]] = {}
    entry = None
    current: list[tuple[str, str, str]] | None = None
    for line in hlo_text.splitlines():
        if current is None:
            match = _COMPUTATION.match(line)
            if match:
                current = computations.setdefault(match.group(1), [])
                if line.startswith("ENTRY"):
                    entry = match.group(1)
            continue
        if line.startswith("}"):
            current = None
            continue
        match = _INSTRUCTION.match(line)
        if match:
            type_text, tail = _split_type(match.group(2))
            current.append((match.group(1), type_text, tail))
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")

    unknown = 0
    memo: dict[str, np.ndarray] = {}

    def visit(name: str) -> np.ndarray:
        """[rollout flops, training flops, rollout bytes, training bytes] of one computation."""
        nonlocal unknown
        if name in memo:
            return memo[name]
        totals = np.zeros(4)
        shapes = {n: _arrays(t) for n, t, _ in computations[name]}
        for _, type_text, tail in computations[name]:
            opcode = tail.split("(", 1)[0]
            op_name = _OP_NAME.search(tail)
            grad = op_name is not None and (
                "jvp(" in op_name.group(1) or "transpose(" in op_name.group(1)
            )
            if opcode in ("dot", "convolution"):
                totals[int(grad)] += _matmul_flops(opcode, type_text, tail, shapes)
            elif opcode.removesuffix("-start") in _COLLECTIVES:
                sizes = [_itemsize(d) * math.prod(s) for d, s in _arrays(type_text)]
                totals[2 + int(grad)] += max(sizes, default=0)
            called = _CALLED.findall(tail)
            for group in _CALLED_LISTS.findall(tail):
                called += [c.strip().lstrip("%") for c in group.split(",") if c.strip()]
            if not called:
                continue
            times = 1
            if opcode == "while":
                trip = _TRIP_COUNT.search(tail)
                if trip is None:
                    unknown += 1
                times = int(trip.group(1)) if trip else default_trip_count
            sub = [visit(c) for c in called if c in computations]
            if opcode == "conditional":  # one branch runs: the costliest
                totals += times * max(sub, key=lambda v: v.sum(), default=np.zeros(4))
            else:
                totals += times * sum(sub, np.zeros(4))
        memo[name] = totals
        return totals

    r_flops, t_flops, r_bytes, t_bytes = visit(entry)
    return ProgramCounts(
        {"rollout": r_flops, "training": t_flops},
        {"rollout": r_bytes, "training": t_bytes},
        unknown,
    )


def _operands(tail: str) -> list[str]:
    inner = tail.split("(", 1)[1]
    depth, out, token = 1, [], ""
    for ch in inner:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            break
        if ch == "," and depth == 1:
            out.append(token)
            token = ""
        else:
            token += ch
    out.append(token)
    return [t.strip().split(" ")[-1].lstrip("%") for t in out if t.strip()]


def _matmul_flops(opcode: str, type_text: str, tail: str, shapes: dict) -> float:
    out = _arrays(type_text)[0][1]
    lhs, rhs = _operands(tail)[:2]
    if opcode == "dot":
        dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", tail)
        lhs_shape = shapes[lhs][0][1]
        contracted = [lhs_shape[int(d)] for d in dims.group(1).split(",") if d] if dims else []
        return 2.0 * math.prod(out) * math.prod(contracted)
    kernel = shapes[rhs][0][1]
    labels = re.search(r"dim_labels=\w+_(\w+)->", tail).group(1)
    return 2.0 * math.prod(out) * math.prod(kernel) / kernel[labels.index("o")]
