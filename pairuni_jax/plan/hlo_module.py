"""The text of an optimised HLO module (``compiled.as_text()``) as computations of instructions.

Just enough of the grammar for ``hlo.count_program``: each instruction's name, result type,
opcode, operands and attribute text; array shapes and dtypes from a type.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s+(ROOT )?%?([\w.\-]+) = (.*)$")
_ARRAY = re.compile(r"(pred|[suf]\d+|bf16|f8\w*|c64|c128|token)\[([\d,]*)\]")
CALLED = re.compile(r"(?:calls|to_apply|body|true_computation|false_computation)=%?([\w.\-]+)")
CALLED_LISTS = re.compile(r"(?:branch_computations|called_computations)=\{([^}]*)\}")
_BYTES = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16, "token": 0}


def itemsize(dtype: str) -> float:
    if dtype in _BYTES:
        return _BYTES[dtype]
    if dtype.startswith("f8"):
        return 1
    return int(re.sub(r"\D", "", dtype)) / 8


def arrays(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
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


def operand_text(tail: str) -> str:
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
    text = re.sub(r"/\*.*?\*/", "", operand_text(tail))
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
