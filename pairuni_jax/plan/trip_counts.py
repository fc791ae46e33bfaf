"""Trip counts of ``while`` loops that the compiler did not annotate (the TPU compiler's).

The loop's scalar state is evaluated: the initial values from the ``while`` operand, then the
condition computation and the body's update of every scalar element (a counter and its step),
iterated until the condition is false. Values that depend on data are unknown; a condition that
is an ``and`` of a known comparison and data (``step < N & ~all(done)``) counts at its bound.
"""

from __future__ import annotations

import math
import re

from pairuni_jax.plan.hlo_module import CALLED, Computation, Instruction, operand_text

# Longest loop a trip count is derived for by iterating its state (decode loops are ~10^3).
MAX_DERIVED_TRIPS = 1_000_000


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
            index = int(operand_text(ins.tail))
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
            called = CALLED.search(ins.tail)
            if called is None or called.group(1) not in self.computations:
                return UNKNOWN
            args = [self._value(comp, o, params, memo) for o in ins.operands]
            return self.run(called.group(1), args)
        if op == "constant":
            literal = operand_text(ins.tail).strip()
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


def derive_trip_count(
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
