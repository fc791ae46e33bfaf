"""The processes of a multi-host run: how they join, and which rows of a global batch each feeds.

Joining (``initialize``), before JAX touches a device:

- **explicit**: ``cluster.coordinator`` (``HOST:PORT`` of process 0), ``cluster.num_processes`` and
  ``cluster.process_id`` all given, from the ``pairuni train`` flags (``--coordinator``,
  ``--num-processes``, ``--process-id``), the run config, or the environment variables of
  ``ENVIRONMENT`` (in that order of precedence). The processes first meet in a small handshake on
  the coordinator's port (``rendezvous``), so a coordinator that cannot be reached, a process that
  does not come, a duplicate id or a disagreeing process count is a ``ClusterError`` naming it
  after at most ``cluster.timeout_s``, instead of the abort of the JAX runtime; then
  ``jax.distributed.initialize(coordinator, num_processes, process_id)``.
- **auto-detected**: none of the three given, and ``distributed`` true, or null on a multi-host
  slice (a TPU pod's or SLURM's environment): ``jax.distributed.initialize()`` finds them.

On CPU the cross-process collectives are gloo's.

Feeding (``host_rows``): the global batch of a step is rows ``[0, G)`` of one global data order;
each process reads the rows its devices hold under the batch sharding, so the batch does not depend
on the number of processes, and no pair is read by two processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from orbax.checkpoint import multihost as ocp_multihost

# Environment variables for the cluster fields (used when neither a flag nor the config sets one).
ENVIRONMENT = {
    "coordinator": "PAIRUNI_COORDINATOR",
    "num_processes": "PAIRUNI_NUM_PROCESSES",
    "process_id": "PAIRUNI_PROCESS_ID",
}
# Environments that launch every host of a slice with their coordinates set (auto-detection).
MULTI_HOST_MARKERS = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES")
_RETRY_SECONDS = 0.25
# How long the processes wait for each other to compile the train step (a 7B step: minutes).
STEP_COMPILE_TIMEOUT_S = 3600.0


class ClusterError(ValueError):
    """A cluster that cannot be formed or fed as given; the message names what and why."""


class CoordinatorUnreachable(ClusterError):
    """The processes did not all meet at the coordinator within ``cluster.timeout_s``."""


class ProcessIdOutOfRange(ClusterError):
    """``cluster.process_id`` not in ``[0, cluster.num_processes)``."""


class HostLayoutError(ClusterError):
    """A mesh or batch that does not divide over the processes."""


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Where this process sits in a multi-process run (all None: a single process, or detected).

    Attributes:
      coordinator: ``HOST:PORT`` where process 0 listens and every other process connects.
      num_processes: N, the processes of the run (one per host, usually).
      process_id: this process, in ``[0, N)``; process 0 is the lead (it writes logs).
      timeout_s: seconds the processes wait for each other at start before giving up.
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: float = 300.0

    def __post_init__(self):
        if self.coordinator is not None:
            parse_address(self.coordinator)
        if self.num_processes is not None and self.num_processes < 1:
            raise ClusterError(f"num_processes must be >= 1, got {self.num_processes}")
        if self.process_id is not None and self.process_id < 0:
            raise ProcessIdOutOfRange(f"process_id must be >= 0, got {self.process_id}")
        if None not in (self.num_processes, self.process_id):
            if self.process_id >= self.num_processes:
                raise ProcessIdOutOfRange(
                    f"process_id {self.process_id} is out of range for {self.num_processes} "
                    f"processes (expected 0 to {self.num_processes - 1})"
                )
        if self.timeout_s <= 0:
            raise ClusterError(f"timeout_s must be > 0, got {self.timeout_s}")

    @property
    def given(self) -> tuple[str, ...]:
        """The names of the coordinate fields that are set."""
        return tuple(name for name in ENVIRONMENT if getattr(self, name) is not None)

    def with_environment(self, environ: Mapping[str, str]) -> ClusterConfig:
        """Fills each unset coordinate from its ``ENVIRONMENT`` variable."""
        values = {}
        for name, variable in ENVIRONMENT.items():
            raw = environ.get(variable)
            if getattr(self, name) is not None or not raw:
                continue
            if name == "coordinator":
                values[name] = raw
                continue
            try:
                values[name] = int(raw)
            except ValueError:
                raise ClusterError(f"{variable}={raw!r}: expected an integer") from None
        return dataclasses.replace(self, **values)


def parse_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (an IPv6 host in brackets: ``[::1]:1234``) -> ``(host, port)``."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"coordinator {address!r}: expected HOST:PORT with a port in 1..65535")
    return host, int(port)


def initialize(cluster: ClusterConfig, distributed: bool | None) -> None:
    """Joins the processes of the run as described in the module docstring (or does nothing)."""
    cluster = cluster.with_environment(os.environ)
    given = cluster.given
    if given and len(given) < len(ENVIRONMENT):
        missing = [n for n in ENVIRONMENT if n not in given]
        flags = ", ".join(f"--{n.replace('_', '-')} / {ENVIRONMENT[n]}" for n in missing)
        raise ClusterError(
            f"cluster.{given[0]} is set but not cluster.{' or cluster.'.join(missing)} ({flags})"
        )
    if given:
        if distributed is False:
            raise ClusterError("distributed=false, but the cluster coordinates are given")
        _select_cpu_collectives()
        rendezvous(cluster)
        jax.distributed.initialize(
            cluster.coordinator,
            num_processes=cluster.num_processes,
            process_id=cluster.process_id,
            initialization_timeout=max(1, round(cluster.timeout_s)),
        )
    elif distributed or (distributed is None and any(k in os.environ for k in MULTI_HOST_MARKERS)):
        _select_cpu_collectives()
        jax.distributed.initialize(initialization_timeout=max(1, round(cluster.timeout_s)))


def _select_cpu_collectives() -> None:
    """Gloo for cross-process collectives on CPU (set before JAX creates its CPU client)."""
    platforms = jax.config.jax_platforms
    if not platforms or "cpu" in platforms.split(","):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


# -- the start-up handshake ----------------------------------------------------------------------


def rendezvous(cluster: ClusterConfig) -> None:
    """Waits until all ``num_processes`` processes have met on the coordinator's port.

    Process 0 listens on the port and answers every other process once all have arrived (then
    frees the port for the JAX coordination service); the others connect (retrying until the
    coordinator is up), say who they are, and wait for the answer. Raises
    ``CoordinatorUnreachable`` when that does not happen within ``cluster.timeout_s``, and
    ``ClusterError`` for a duplicate process id or a disagreeing process count.
    """
    if cluster.num_processes == 1:
        return
    deadline = time.monotonic() + cluster.timeout_s
    if cluster.process_id == 0:
        _lead_rendezvous(cluster, deadline)
    else:
        _member_rendezvous(cluster, deadline)


def _lead_rendezvous(cluster: ClusterConfig, deadline: float) -> None:
    _, port = parse_address(cluster.coordinator)
    dual = socket.has_dualstack_ipv6()
    try:
        server = socket.create_server(
            ("", port), family=socket.AF_INET6 if dual else socket.AF_INET, dualstack_ipv6=dual
        )
    except OSError as e:
        raise ClusterError(
            f"process 0 cannot listen on port {port} of {cluster.coordinator}: {e}"
        ) from e
    members: dict[int, socket.socket] = {}
    try:
        with server:
            while len(members) < cluster.num_processes - 1:
                server.settimeout(max(deadline - time.monotonic(), 1e-3))
                try:
                    connection, _ = server.accept()
                except TimeoutError:
                    missing = sorted(set(range(1, cluster.num_processes)) - set(members))
                    raise CoordinatorUnreachable(
                        f"process 0 waited {cluster.timeout_s:g} s at {cluster.coordinator} for "
                        f"{cluster.num_processes} processes; process(es) {missing} did not come "
                        f"(started with --coordinator {cluster.coordinator}?)"
                    ) from None
                hello = _receive(connection, deadline)
                if hello is None:  # not one of ours (a port probe): ignore it
                    connection.close()
                    continue
                problem = _check_member(hello, cluster, members)
                if problem:
                    _send(connection, {"error": problem})
                    connection.close()
                    raise ClusterError(problem)
                members[hello["process_id"]] = connection
            for connection in members.values():
                _send(connection, {"ok": True})
            for connection in members.values():  # members close first: the port stays bindable
                _receive(connection, deadline)
    finally:
        for connection in members.values():
            connection.close()


def _check_member(hello: dict, cluster: ClusterConfig, members: Mapping[int, object]) -> str:
    member, count = hello.get("process_id"), hello.get("num_processes")
    if count != cluster.num_processes:
        return (
            f"process {member} was started with {count} processes, "
            f"process 0 with {cluster.num_processes}"
        )
    if member in members:
        return f"two processes were started with process id {member}"
    return ""


def _member_rendezvous(cluster: ClusterConfig, deadline: float) -> None:
    host, port = parse_address(cluster.coordinator)
    me = f"process {cluster.process_id} of {cluster.num_processes}"
    while True:
        try:
            connection = socket.create_connection(
                (host, port), timeout=max(deadline - time.monotonic(), 1e-3)
            )
            break
        except OSError as e:
            if time.monotonic() + _RETRY_SECONDS >= deadline:
                raise CoordinatorUnreachable(
                    f"{me} could not reach the coordinator {cluster.coordinator} within "
                    f"{cluster.timeout_s:g} s ({e}); is process 0 running, and is the address "
                    f"reachable from this host?"
                ) from None
            time.sleep(_RETRY_SECONDS)
    with connection:
        _send(
            connection, {"process_id": cluster.process_id, "num_processes": cluster.num_processes}
        )
        answer = _receive(connection, deadline)
    if answer is None:
        raise CoordinatorUnreachable(
            f"{me} reached {cluster.coordinator}, but not all processes joined within "
            f"{cluster.timeout_s:g} s"
        )
    if "error" in answer:
        raise ClusterError(answer["error"])


def _send(connection: socket.socket, message: dict) -> None:
    connection.sendall(json.dumps(message).encode() + b"\n")


def _receive(connection: socket.socket, deadline: float) -> dict | None:
    """One JSON line from ``connection``; None on timeout, a closed connection or garbage."""
    data = b""
    while not data.endswith(b"\n"):
        connection.settimeout(max(deadline - time.monotonic(), 1e-3))
        try:
            chunk = connection.recv(4096)
        except (TimeoutError, OSError):
            return None
        if not chunk:
            return None
        data += chunk
    try:
        message = json.loads(data)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def barrier(name: str, timeout_s: float) -> None:
    """Waits until every process has called ``barrier(name, ...)`` (a no-op for one process).

    The coordination service's barrier, not a device collective: on CPU a gloo collective gives
    up when another process arrives more than 30 s later, which a slower compile easily is.
    """
    sync = ocp_multihost.get_barrier_sync_fn()
    sync(key=name, timeout_ms=int(timeout_s * 1000))


def max_over_processes(value: int) -> int:
    """The largest ``value`` passed by any process; every process calls it at the same point of
    the program (a small device collective; no-op for one process). Used to act on a request
    one process received (a stop signal) in all of them at the same step."""
    if jax.process_count() == 1:
        return value
    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


# -- which rows each process feeds ---------------------------------------------------------------


def host_rows(sharding: jax.sharding.Sharding, global_pairs: int) -> np.ndarray:
    """The rows of a ``[global_pairs, ...]`` batch this process's devices hold under
    ``sharding``, ascending: the order ``jax.make_array_from_process_local_data`` expects this
    process's local batch in (its row ``j`` lands at global row ``rows[j]``)."""
    rows: set[int] = set()
    for index in sharding.addressable_devices_indices_map((global_pairs,)).values():
        rows.update(range(*index[0].indices(global_pairs)))
    return np.array(sorted(rows), dtype=np.int64)


def check_host_rows(rows: np.ndarray, pairs_per_host: int, mesh: jax.sharding.Mesh) -> None:
    """Every process must feed ``pairs_per_host`` distinct rows (together: each row once)."""
    if len(rows) != pairs_per_host:
        shape = dict(mesh.shape)
        raise HostLayoutError(
            f"process {jax.process_index()} of {jax.process_count()} holds {len(rows)} rows of "
            f"the global batch of {pairs_per_host * jax.process_count()} pairs under the mesh "
            f"{shape}, not data.pairs_per_host={pairs_per_host}: the batch axes (data × fsdp) "
            f"must split the batch over the hosts (keep the tensor axis within a host)"
        )
