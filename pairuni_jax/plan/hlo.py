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
from collections.abc import Iterator

import numpy as np

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s+(ROOT )?%?([\w.\-]+) = (.*)$")
_ARRAY = re.compile(r"(pred|[suf]\d+|bf16|f8\w*|c64|c128|token)\[([\d,]*)\]")
_CALLED = re.compile(r"(?:calls|to_apply|body|true_computation|false_computation)=%?([\w.\-]+)")
_CALLED_LISTS = re.compile(r"(?:branch_computations|called_computations)=\{([^}]*)\}")
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
_BYTES = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16, "token": 0}
# Longest loop a trip count is derived for by iterating its state (decode loops are ~10^3).
MAX_DERIVED_TRIPS = 1_000_000

# Index of each total in a counts vector.
FLOPS, BYTES, COUNT = 0, 2, 4  # +0: outside the gradient (rollout), +1: inside it (training)


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


def _operand_text(tail: str) -> str:
    """The text between an instruction's opcode parentheses."""
    inner = tail.split("(", 1)[1]
    depth = 1
    for i, ch in enumerate(inner):
        depth += {"(": 1, ")": -1, "{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return inner[:i]
    return inner


def _operands(tail: str) -> list[str]:
    """Operand names (``%x``, or ``f32[2] %x`` in older dumps); literal text for ``constant``."""
    text = re.sub(r"/\*.*?\*/", "", _operand_text(tail))
    out, depth, token = [], 0, ""
    for ch in text:
        depth += {"(": 1, ")": -1, "{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(token)
            token = ""
        else:
            token += ch
    out.append(token)
    return [t.strip().split(" ")[-1].lstrip("%") for t in out if t.strip()]


@dataclasses.dataclass
class Instruction:
    name: str
    type_text: str
    opcode: str
    tail: str  # "opcode(operands), attributes, metadata"

    @property
    def operands(self) -> list[str]:
        return _operands(self.tail)

    @property
    def is_scalar(self) -> bool:
        """A single integer or boolean (what loop counters are)."""
        return re.fullmatch(r"(pred|[su]\d+)\[\](\{[^}]*\})?", self.type_text) is not None


@dataclasses.dataclass
class Computation:
    name: str
    instructions: dict[str, Instruction]
    root: str

    def __iter__(self) -> Iterator[Instruction]:
        return iter(self.instructions.values())


def parse_module(hlo_text: str) -> tuple[dict[str, Computation], str]:
    """The computations of an HLO module (``compiled.as_text()``) and the entry's name."""
    computations: dict[str, Computation] = {}
    entry = None
    current: Computation | None = None
    for line in hlo_text.splitlines():
        if current is None:
            match = _COMPUTATION.match(line)
            if match:
                current = Computation(match.group(1), {}, "")
                computations[current.name] = current
                if line.startswith("ENTRY"):
                    entry = current.name
            continue
        if line.startswith("}"):
            current = None
            continue
        match = _INSTRUCTION.match(line)
        if match:
            type_text, tail = _split_type(match.group(3))
            opcode = tail.split("(", 1)[0]
            name = match.group(2)
            current.instructions[name] = Instruction(name, type_text, opcode, tail)
            if match.group(1):
                current.root = name
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return computations, entry


# -- trip counts ---------------------------------------------------------------------------------


class _Unknown:
    def __repr__(self) -> str:
        return "?"


UNKNOWN = _Unknown()
_COMPARE = {
    "LT": lambda a, b: a < b,
    "LE": lambda a, b: a <= b,
    "GT": lambda a, b: a > b,
    "GE": lambda a, b: a >= b,
    "EQ": lambda a, b: a == b,
    "NE": lambda a, b: a != b,
}
_ARITHMETIC = {
    "add": lambda a, b: a + b,
    "subtract": lambda a, b: a - b,
    "multiply": lambda a, b: a * b,
    "maximum": max,
    "minimum": min,
    "divide": lambda a, b: int(a / b) if b else UNKNOWN,  # integer division truncates
    "remainder": lambda a, b: int(math.fmod(a, b)) if b else UNKNOWN,
}


class _Evaluator:
    """Evaluates the scalar integer and boolean values of a computation, given its parameters.

    Values are Python ints and bools, lists (tuples), or ``UNKNOWN`` (arrays, and anything that
    depends on data). With ``bound=True`` an ``and`` of known-true and unknown operands counts as
    true (the loop may stop earlier on data: an upper bound), and ``self.bounded`` records it.
    """

    def __init__(self, computations: dict[str, Computation], bound: bool = False):
        self.computations = computations
        self.bound = bound
        self.bounded = False

    def run(self, name: str, params: list) -> object:
        comp = self.computations[name]
        memo: dict[str, object] = {}
        return self._value(comp, comp.root, params, memo)

    def _value(self, comp: Computation, name: str, params: list, memo: dict) -> object:
        if name not in memo:
            memo[name] = self._compute(comp, comp.instructions[name], params, memo)
        return memo[name]

    def _compute(self, comp: Computation, ins: Instruction, params: list, memo: dict) -> object:
        op = ins.opcode
        if op == "parameter":
            index = int(_operand_text(ins.tail))
            return params[index] if index < len(params) else UNKNOWN
        if not ins.is_scalar and not ins.type_text.startswith("("):
            return UNKNOWN  # an array: data, not a loop counter
        if op == "get-tuple-element":
            value = self._value(comp, ins.operands[0], params, memo)
            index = int(re.search(r"index=(\d+)", ins.tail).group(1))
            return value[index] if isinstance(value, list) and index < len(value) else UNKNOWN
        if op == "tuple":
            return [self._value(comp, o, params, memo) for o in ins.operands]
        if op in ("fusion", "call"):
            called = _CALLED.search(ins.tail)
            if called is None or called.group(1) not in self.computations:
                return UNKNOWN
            args = [self._value(comp, o, params, memo) for o in ins.operands]
            return self.run(called.group(1), args)
        if op == "constant":
            literal = _operand_text(ins.tail).strip()
            if literal in ("true", "false"):
                return literal == "true"
            try:
                return int(literal)
            except ValueError:
                return UNKNOWN
        args = [self._value(comp, o, params, memo) for o in ins.operands]
        if op in ("and", "or"):
            return self._logic(op, args)
        if any(a is UNKNOWN for a in args):
            return UNKNOWN
        if op in ("copy", "convert", "bitcast") and len(args) == 1:
            value = args[0]
            return bool(value) if ins.type_text.startswith("pred") else int(value)
        if op == "not":
            return (not args[0]) if isinstance(args[0], bool) else ~args[0]
        if op == "negate":
            return -args[0]
        if op == "compare":
            direction = re.search(r"direction=(\w+)", ins.tail).group(1)
            return _COMPARE[direction](args[0], args[1])
        if op == "select":
            return args[1] if args[0] else args[2]
        if op == "clamp":
            return min(max(args[1], args[0]), args[2])
        if op in _ARITHMETIC and len(args) == 2:
            return _ARITHMETIC[op](args[0], args[1])
        return UNKNOWN

    def _logic(self, op: str, args: list) -> object:
        known = [a for a in args if a is not UNKNOWN]
        if op == "and":
            if any(a is False for a in known):
                return False
            if len(known) == len(args):
                return True
            if self.bound and known:  # data may end the loop sooner: count the bound
                self.bounded = True
                return True
            return UNKNOWN
        if any(a is True for a in known):
            return True
        return False if len(known) == len(args) else UNKNOWN


def _derive_trip_count(
    computations: dict[str, Computation], caller: Computation, loop: Instruction
) -> tuple[int | None, bool]:
    """(trips, bounded) of a ``while`` by running its scalar state, or (None, False)."""
    condition = re.search(r"condition=%?([\w.\-]+)", loop.tail).group(1)
    body = re.search(r"body=%?([\w.\-]+)", loop.tail).group(1)
    init = _Evaluator(computations)._value(caller, loop.operands[0], [], {})
    if not isinstance(init, list):
        init = [init]
    evaluator = _Evaluator(computations, bound=True)
    state = init
    for trips in range(MAX_DERIVED_TRIPS + 1):
        go = evaluator.run(condition, [state])
        if go is UNKNOWN:
            return None, False
        if not go:
            return trips, evaluator.bounded
        state = evaluator.run(body, [state])
        if not isinstance(state, list):
            state = [state]
    return None, False


# -- counting ------------------------------------------------------------------------------------


def _conv_taps(lhs: int, window: int, out: int, stride: int, pad: int, dil_l: int, dil_r: int):
    """(output position, kernel tap) pairs of one spatial dimension that meet a real input."""
    position = np.arange(out)[:, None] * stride + np.arange(window)[None, :] * dil_r - pad
    real = (position >= 0) & (position <= (lhs - 1) * dil_l) & (position % dil_l == 0)
    return int(real.sum())


def _convolution_flops(ins: Instruction, shapes: dict[str, list]) -> float:
    out = _arrays(ins.type_text)[0][1]
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
    out = _arrays(ins.type_text)[0][1]
    lhs_shape = shapes[ins.operands[0]][0][1]
    dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.tail)
    contracted = [lhs_shape[int(d)] for d in dims.group(1).split(",") if d] if dims else []
    return 2.0 * math.prod(out) * math.prod(contracted)


def is_collective(opcode: str) -> bool:
    """A collective that moves data now: a synchronous one, or the ``-done`` of an async one."""
    return opcode in _COLLECTIVES or opcode.removesuffix("-done") in _COLLECTIVES


@dataclasses.dataclass(frozen=True)
class Counts:
    """Matmul FLOPs, collective bytes and collective ops, each split into ``rollout`` (no
    gradient) and ``training`` (ops under ``jvp``/``transpose``: forward and backward)."""

    flops: dict[str, float]
    collective_bytes: dict[str, float]
    collectives: dict[str, float]

    @classmethod
    def from_vector(cls, v: np.ndarray) -> Counts:
        def split(i: int) -> dict[str, float]:
            return {"rollout": float(v[i]), "training": float(v[i + 1])}

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
        totals = np.zeros(6)
        shapes = {ins.name: _arrays(ins.type_text) for ins in comp}
        for ins in comp:
            op_name = _OP_NAME.search(ins.tail)
            op_name = op_name.group(1) if op_name else ""
            grad = int("jvp(" in op_name or "transpose(" in op_name)
            if ins.opcode == "dot":
                totals[FLOPS + grad] += _dot_flops(ins, shapes)
            elif ins.opcode == "convolution":
                totals[FLOPS + grad] += _convolution_flops(ins, shapes)
            elif is_collective(ins.opcode):
                totals[BYTES + grad] += sum(
                    _itemsize(d) * math.prod(s) for d, s in _arrays(ins.type_text)
                )
                totals[COUNT + grad] += 1
            if ins.opcode in ("async-update", "async-done"):  # their computation runs once
                continue
            called = _CALLED.findall(ins.tail)
            for group in _CALLED_LISTS.findall(ins.tail):
                called += [c.strip().lstrip("%") for c in group.split(",") if c.strip()]
            sub = [visit(c) for c in called if c in computations]
            if not sub:
                continue
            if ins.opcode == "while":
                condition = re.search(r"condition=%?([\w.\-]+)", ins.tail).group(1)
                per_trip = sum(sub, np.zeros(6)) + visit(condition)
                trips, source = _trip_count(computations, comp, ins, default_trip_count)
                loops.append(Loop(op_name, trips, source, Counts.from_vector(per_trip)))
                totals += trips * per_trip
            elif ins.opcode == "conditional":  # one branch runs: the costliest
                totals += max(sub, key=lambda v: v.sum())
            else:
                totals += sum(sub, np.zeros(6))
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
    trips, bounded = _derive_trip_count(computations, caller, loop)
    if trips is None:
        return default, "default"
    return trips, "bounded" if bounded else "derived"
