"""``pairuni plan``: per-device memory, FLOPs and step time of the real train step, before launch.

One concept per module: ``slices`` (the slice catalogue, TPU topologies, the libtpu check),
``abstract_run`` (the train step built from abstract inputs), ``hlo`` (reading the compiled
program: ``count_program``; ``hlo_module`` parses the HLO text, ``trip_counts`` derives the loops'
trip counts), ``model`` (``make_plan``: compile, then measure) and ``report`` (the text table, the
advice, the JSON).
"""

from pairuni_jax.plan.abstract_run import (
    AbstractRun,
    build_abstract_run,
    policy_config,
    reward_config,
)
from pairuni_jax.plan.hlo import ProgramCounts, count_program
from pairuni_jax.plan.model import MeshMismatchError, Plan, StepRefused, make_plan
from pairuni_jax.plan.report import (
    advice,
    format_plan,
    format_refusal,
    plan_json,
    refusal_json,
    write_json,
)
from pairuni_jax.plan.slices import (
    TPU_TOPOLOGIES,
    LibtpuBusyError,
    LibtpuMismatchError,
    Slice,
    UnknownTopologyError,
    tpu_topology_devices,
)

__all__ = [
    "AbstractRun",
    "LibtpuBusyError",
    "LibtpuMismatchError",
    "MeshMismatchError",
    "Plan",
    "ProgramCounts",
    "Slice",
    "StepRefused",
    "TPU_TOPOLOGIES",
    "UnknownTopologyError",
    "advice",
    "build_abstract_run",
    "count_program",
    "format_plan",
    "format_refusal",
    "make_plan",
    "plan_json",
    "policy_config",
    "refusal_json",
    "reward_config",
    "tpu_topology_devices",
    "write_json",
]
