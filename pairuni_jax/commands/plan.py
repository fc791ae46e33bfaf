"""``pairuni plan --config FILE [...] [key.sub=value ...]``: will the step fit, and how fast?

Compiles the real train step of the config ahead of time, with abstract inputs (no weights are
read or allocated), for a mesh over:

- ``--topology v5e-64`` (v4-N, v5p-N, v5e-N, v6e-N, h100-N, h200-N): the slice's chips, HBM, peak
  FLOP/s and host count; the TPU compiler's compile-only devices when libtpu is installed,
  otherwise as many fake CPU devices;
- ``--devices N``: N fake CPU devices (give ``--hbm-gib`` to check a limit);
- neither: the devices of this machine.

Prints memory per device, FLOPs per step and the projected step time (``--json FILE`` also
writes them machine-readably); exits 1 when the step does not fit in HBM, naming what would make
it fit and the settings that would help, 2 on a bad config, mesh, topology or libtpu.
"""

from __future__ import annotations

import argparse
import sys

from pairuni_jax.commands.train import add_run_config_arguments

GIB = 2**30


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="ahead-of-time memory, FLOPs and step time of the train step for a slice",
        description=__doc__.splitlines()[0],
    )
    add_run_config_arguments(parser)
    parser.add_argument(
        "--mesh", metavar="data=D,fsdp=F,tensor=T", help="mesh sizes (overrides the config's)"
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--topology", metavar="SLICE", help="target slice, e.g. v5e-64, v5p-16")
    target.add_argument("--devices", type=int, metavar="N", help="compile for N fake CPU devices")
    parser.add_argument(
        "--hosts", type=int, metavar="N", help="hosts feeding the step (default: the slice's, or 1)"
    )
    parser.add_argument("--hbm-gib", type=float, metavar="X", help="HBM per device to fit into")
    parser.add_argument(
        "--mfu", type=float, default=0.4, help="assumed MFU of compute-bound work (default 0.4)"
    )
    parser.add_argument(
        "--json", metavar="FILE", help="also write the plan as JSON (a new file, or a plan's)"
    )
    parser.set_defaults(func=run)


def check_json_destination(path: str) -> None:
    """Refuses, before compiling, a destination that cannot be written or that holds something
    other than an earlier plan (never overwrite what plan did not write)."""
    import json
    from pathlib import Path

    target = Path(path)
    if not target.parent.is_dir():
        raise ValueError(f"--json {path}: directory {target.parent} does not exist")
    if target.exists():
        try:
            previous = json.loads(target.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            previous = None
        if not (isinstance(previous, dict) and {"compiler", "memory_bytes"} <= previous.keys()):
            raise ValueError(f"--json {path}: exists and is not a plan this command wrote")


def _mesh_overrides(text: str) -> list[str]:
    """``data=1,fsdp=8`` -> ``["mesh.data=1", "mesh.fsdp=8"]`` (the config keeps the other axes)."""
    from pairuni_jax.sharding import parse_mesh_flag

    return [f"mesh.{name}={size}" for name, size in parse_mesh_flag(text).items()]


def cpu_devices(count: int) -> list:
    """``count`` fake CPU devices (asks for them when JAX has not started a backend yet)."""
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", max(count, 1))
    except RuntimeError:  # JAX has started already: its CPU devices are checked below
        pass
    devices = jax.devices("cpu")
    if len(devices) < count:
        raise ValueError(
            f"{count} CPU devices requested but JAX already started with {len(devices)}: run "
            f"plan in a fresh process, or set XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{count}"
        )
    return devices[:count]


def run(args: argparse.Namespace) -> int:
    import jax

    from pairuni_jax import flops, plan
    from pairuni_jax.run_config import load_run_config

    try:
        if args.json:
            check_json_destination(args.json)
        overrides = list(args.overrides) + (_mesh_overrides(args.mesh) if args.mesh else [])
        config = load_run_config(args.config, overrides)
        hosts = args.hosts
        if args.topology:
            target = plan.Slice.parse(args.topology)
            devices = plan.tpu_topology_devices(target)
            where = "TPU compiler" if devices else "fake CPU devices"
            devices = devices or cpu_devices(target.chips)
            chip, name = target.chip, f"{target.name} ({where})"
            hosts = hosts or target.hosts
        elif args.devices:
            devices = cpu_devices(args.devices)
            chip, name = None, "fake CPU devices"
        else:
            devices = jax.devices()
            chip = flops.chip_for_device_kind(devices[0].device_kind)
            name = f"this machine ({devices[0].device_kind})"
        hbm = round(args.hbm_gib * GIB) if args.hbm_gib else None
        result = plan.make_plan(
            config,
            devices,
            target=name,
            chip=chip,
            hosts=hosts or 1,
            hbm_bytes=hbm,
            mfu=args.mfu,
        )
    except ValueError as e:
        print(f"pairuni plan: error: {e}", file=sys.stderr)
        return 2
    except plan.StepRefused as refused:  # an answer, not an error: it does not fit
        print(plan.format_refusal(refused))
        if args.json:
            plan.write_json(refused, args.json)
            print(f"plan written to {args.json}")
        return 1
    print(plan.format_plan(result))
    if args.json:
        plan.write_json(result, args.json)
        print(f"plan written to {args.json}")
    if result.fits is None:
        print("no HBM size known: pass --topology or --hbm-gib to check the fit")
    elif not result.fits:
        print(plan.advice(result), file=sys.stderr)
        return 1
    return 0
