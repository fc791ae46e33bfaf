"""`pairuni train` as 2 processes x 4 CPU devices on 127.0.0.1, as two GPU hosts would run it.

- the first step equals the 1-process 8-device run of the same global batch;
- a SIGTERM to one process: the cluster saves and exits cleanly, and the next start resumes with
  the metrics of the uninterrupted 2-process run;
- the global batch laid over the hosts (``tests/host_layout_driver.py``);
- the named errors of a cluster that cannot form.

The children share the suite's persistent compilation cache; on CPU only process 0 finds its
programs there (the cache key holds the process's CPU topology), so process 1 compiles each start.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import pytest

from pairuni_jax import cli, cluster, errors
from pairuni_jax.run_config import load_run_config
from pairuni_jax.train import Trainer

ROOT = Path(__file__).parents[1]
FAST = [
    "steps=4",
    "checkpoint.every=2",
    "checkpoint.async_save=false",
    "logging.samples_every=2",
    "logging.tensorboard=false",
    "grpo.rollout.num_und_rollouts=2",
    "grpo.rollout.num_gen_rollouts=2",
    "grpo.rollout.max_new_tokens=8",
]
TIMEOUT_S = 900
RTOL, ATOL = 1e-4, 1e-6  # 1 vs 2 processes: the same program up to the collectives' sum order


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, "--xla_force_host_platform_device_count=4"])
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"  # as conftest sets for the 1-process run
    env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


class Cluster:
    """Processes 0 and 1 of a fresh cluster on 127.0.0.1, each running ``argv(port, i)``."""

    def __init__(self, argv, logs: Path):
        port = _free_port()
        self.logs = [logs.with_name(f"{logs.name}.{i}.log") for i in range(2)]
        self.processes = []
        for i, log in enumerate(self.logs):
            with open(log, "w") as out:
                self.processes.append(
                    subprocess.Popen(
                        argv(port, i), stdout=out, stderr=subprocess.STDOUT, env=_child_env()
                    )
                )

    def wait(self, exit_code: int = 0) -> list[str]:
        """Waits for both; asserts that both exited ``exit_code``; returns their output."""
        deadline = time.monotonic() + TIMEOUT_S
        try:
            for p in self.processes:
                p.wait(timeout=max(deadline - time.monotonic(), 1))
        finally:
            for p in self.processes:
                if p.poll() is None:
                    p.kill()
        texts = [log.read_text() for log in self.logs]
        for i, (p, text) in enumerate(zip(self.processes, texts)):
            assert p.returncode == exit_code, f"process {i} exited {p.returncode}:\n{text[-4000:]}"
        return texts


def _train(run_dir: Path) -> Cluster:
    def argv(port, i):
        return [
            *(sys.executable, "-m", "pairuni_jax.cli", "train", f"run_dir={run_dir}"),
            *(*FAST, "data.pairs_per_host=4"),
            *("--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"),
            *("--process-id", str(i)),
        ]

    return Cluster(argv, run_dir)


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


def _timeless(m: dict) -> dict:  # wall-clock and throughput values differ between runs
    return {k: v for k, v in m.items() if k not in ("time", "step_seconds") and "per_s" not in k}


def _saved_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def test_two_processes_train_like_one_and_resume_after_sigterm(tmp_path):
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    full = _train(full_dir)
    # Meanwhile, the 1-process 8-device run of the same 8 pairs.
    one = [f"run_dir={tmp_path / 'one'}", *FAST, "data.pairs_per_host=8", "steps=1"]
    one_first = _timeless(Trainer(load_run_config([], one)).run_steps()[0])
    full.wait()
    full_metrics = [_timeless(m) for m in _metrics(full_dir)]
    assert [m["step"] for m in full_metrics] == [1, 2, 3, 4]
    assert _saved_steps(full_dir) == [2, 4]
    samples = sorted(p.name for p in (full_dir / "samples").iterdir())
    # The first step's grid shows where the run starts, then every samples_every steps.
    assert samples == [f"step_00000{s}{x}" for s in (1, 2, 4) for x in (".png", "_answers.txt")]

    # (b) The first step of 2 processes x 4 devices equals 1 process x 8 devices.
    assert one_first.keys() == full_metrics[0].keys()
    worst = max(
        abs(full_metrics[0][k] - v) / max(abs(v), ATOL / RTOL) for k, v in one_first.items()
    )
    print(f"1 vs 2 processes, step 1: largest relative difference {worst:.2e}")
    for key, value in one_first.items():
        assert full_metrics[0][key] == pytest.approx(value, rel=RTOL, abs=ATOL), key

    # (c) SIGTERM to process 1 once step 1 is logged: both save at the same step and exit
    # ExitCode.PREEMPTED (the one signalled, and the other that stopped with it).
    part = _train(part_dir)
    deadline = time.monotonic() + TIMEOUT_S
    while not _metrics(part_dir) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in part.processes), "a process exited before step 1"
        time.sleep(0.2)
    part.processes[1].send_signal(signal.SIGTERM)
    part.wait(exit_code=errors.ExitCode.PREEMPTED)
    stopped = _saved_steps(part_dir)[-1]
    assert 1 < stopped < 4 and _saved_steps(part_dir) == sorted({2, stopped}), stopped
    assert [m["step"] for m in _metrics(part_dir)] == list(range(1, stopped + 1))
    # The data position (the same on both hosts): 4 rows of each global batch read per step.
    position = part_dir / "checkpoints" / str(stopped) / "data" / "metadata"
    assert json.loads(position.read_text()) == {"next_index": 4 * stopped}

    # (a) The next start resumes there; the metrics are those of the uninterrupted run.
    logs = _train(part_dir).wait()
    assert f"at step {stopped}" in logs[0]
    part_metrics = [_timeless(m) for m in _metrics(part_dir)]
    assert [m["step"] for m in part_metrics] == [1, 2, 3, 4]
    assert part_metrics == full_metrics


def test_global_batch_layout_over_hosts(tmp_path):
    driver = ROOT / "tests" / "host_layout_driver.py"
    layout = Cluster(
        lambda port, i: [sys.executable, str(driver), str(port), str(i)], tmp_path / "layout"
    )
    found = [
        json.loads(line.removeprefix("FOUND "))
        for text in layout.wait()
        for line in text.splitlines()
        if line.startswith("FOUND ")
    ]
    assert [(f["devices"], f["processes"]) for f in found] == [(8, 2), (8, 2)]
    # Interleaved devices: every other row, assembled at the right global rows.
    assert [f["rows"] for f in found] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert all(f["assembled_equals_global"] for f in found)
    assert [f["default_rows"] for f in found] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    for f in found:
        assert (
            "6 pairs do not split over the data × fsdp = 8 batch shards" in f["indivisible_batch"]
        )
        assert "holds 8 rows of the global batch of 8 pairs" in f["tensor_across_hosts"]
        assert "keep the tensor axis within a host" in f["tensor_across_hosts"]


def test_cluster_errors_are_one_line(capsys, tmp_path):
    nobody = f"127.0.0.1:{_free_port()}"
    cases = {
        (
            "cluster.timeout_s=1",
            "--coordinator",
            nobody,
            "--num-processes",
            "2",
            "--process-id",
            "1",
        ): f"error: process 1 of 2 could not reach the coordinator {nobody} within 1 s",
        (
            "cluster.process_id=0",
            "--coordinator",
            nobody,
            "--num-processes",
            "2",
            "--process-id",
            "2",
        ): "error: process_id 2 is out of range for 2 processes (expected 0 to 1)",
        (
            "--coordinator",
            nobody,
            "--process-id",
            "1",
        ): "error: cluster.coordinator is set but not cluster.num_processes (--num-processes / "
        "PAIRUNI_NUM_PROCESSES)",
        (
            "--coordinator",
            "nohost",
            "--num-processes",
            "2",
            "--process-id",
            "0",
        ): "error: coordinator 'nohost': expected HOST:PORT",
    }
    for args, message in cases.items():
        assert cli.main(["train", f"run_dir={tmp_path}", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err, (args, err)
        assert "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written


def _meet(configs: list[cluster.ClusterConfig]) -> list[Exception | None]:
    """Runs ``rendezvous`` for each config in its own thread; returns what each raised."""
    errors: list[Exception | None] = [None] * len(configs)

    def one(i):
        try:
            cluster.rendezvous(configs[i])
        except cluster.ClusterError as e:
            errors[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return errors


def test_rendezvous_names_what_went_wrong():
    def configs(*members, lead=3, timeout_s=5.0):
        address = f"127.0.0.1:{_free_port()}"
        lead_config = cluster.ClusterConfig(address, lead, 0, timeout_s=timeout_s)
        return [lead_config] + [
            cluster.ClusterConfig(address, n, i, timeout_s=timeout_s) for n, i in members
        ]

    assert _meet(configs((3, 2), (3, 1))) == [None, None, None]
    lead, _, _ = _meet(configs((3, 1), (3, 1)))
    assert "two processes were started with process id 1" in str(lead)
    lead, member = _meet(configs((3, 1), lead=2))
    assert "process 1 was started with 3 processes, process 0 with 2" in str(lead)
    assert str(member) == str(lead)
    lead, member = _meet(configs((3, 1), timeout_s=1.0))
    assert isinstance(lead, cluster.CoordinatorUnreachable)
    assert "process(es) [2] did not come" in str(lead)
    assert isinstance(member, cluster.CoordinatorUnreachable)


def test_cluster_fields_from_the_environment():
    env = {"PAIRUNI_COORDINATOR": "10.0.0.1:8476", "PAIRUNI_NUM_PROCESSES": "4"}
    filled = cluster.ClusterConfig(process_id=3).with_environment(env)
    assert filled == cluster.ClusterConfig("10.0.0.1:8476", 4, 3)
    assert cluster.ClusterConfig("h:1", 2, 1).with_environment(env).num_processes == 2
    with pytest.raises(cluster.ProcessIdOutOfRange, match="process_id 3 is out of range"):
        cluster.ClusterConfig(num_processes=2).with_environment({"PAIRUNI_PROCESS_ID": "3"})
    with pytest.raises(cluster.ClusterError, match="PAIRUNI_NUM_PROCESSES='two'"):
        cluster.ClusterConfig().with_environment({"PAIRUNI_NUM_PROCESSES": "two"})
    assert cluster.parse_address("[::1]:8476") == ("::1", 8476)
