"""Run directories: the lock, the config history, and the resume check (fast, no training)."""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest
import yaml

from pairuni_jax import config as config_lib
from pairuni_jax import config_changes, run_dir
from pairuni_jax.config import ConfigError
from pairuni_jax.run_config import RunConfig, load_run_config

HOLD_LOCK = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from pairuni_jax.run_dir import RunLock
    lock = RunLock.acquire(Path(sys.argv[1]))
    print("locked", flush=True)
    if sys.argv[2] == "die":
        os._exit(0)  # like kill -9: no cleanup, the lock file stays
    sys.stdin.read()  # hold until the test closes stdin
    """
)


def _holder(directory, mode):
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(directory), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_live_trainer_keeps_the_run_dir(tmp_path):
    process = _holder(tmp_path, "hold")
    try:
        with pytest.raises(run_dir.RunDirError, match=f"in use by pid {process.pid} on host"):
            run_dir.RunLock.acquire(tmp_path)
    finally:
        process.communicate("")
    assert not (tmp_path / run_dir.LOCK_FILE).exists(), "the holder released it on exit"
    run_dir.RunLock.acquire(tmp_path).release()


def test_a_dead_trainers_lock_is_taken_over_with_a_message(tmp_path, capsys):
    process = _holder(tmp_path, "die")
    process.wait()
    stale = json.loads((tmp_path / run_dir.LOCK_FILE).read_text())
    assert stale["pid"] == process.pid
    lock = run_dir.RunLock.acquire(tmp_path)
    assert f"taking over the stale lock {tmp_path / run_dir.LOCK_FILE}" in capsys.readouterr().err
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    with pytest.raises(run_dir.RunDirError, match="two trainers must not share a run_dir"):
        run_dir.RunLock.acquire(tmp_path)  # also within one process
    lock.release()
    assert not lock.path.exists()


def test_a_lock_of_another_host_is_refused_with_what_to_do(tmp_path):
    holder = {"host": "tpu-vm-7", "pid": 1, "started": "2025-01-01T00:00:00+00:00"}
    (tmp_path / run_dir.LOCK_FILE).write_text(json.dumps(holder))
    assert socket.gethostname() != "tpu-vm-7"
    with pytest.raises(run_dir.RunDirError, match="pid 1 on host tpu-vm-7 .*delete that file"):
        run_dir.RunLock.acquire(tmp_path)
    assert json.loads((tmp_path / run_dir.LOCK_FILE).read_text()) == holder


def _config(*overrides) -> dict:
    return config_lib.to_dict(load_run_config([], list(overrides)))


def test_resume_check_names_fields_with_old_and_new_values():
    old = _config()
    new = _config(
        "optimizer.learning_rate=3e-5", "steps=40", "model.init_seed=1", "logging.every=5"
    )
    with pytest.raises(config_changes.ConfigChangeError) as info:
        config_changes.check_resume(old, new, [], "runs/R")
    message = str(info.value)
    assert "model.init_seed: 0 -> 1 cannot change on resume" in message
    assert "optimizer.learning_rate: 0.001 -> 3e-05" in message
    assert "--allow-config-change optimizer.learning_rate steps" in message
    assert "logging" not in message  # free to change

    # Allowing the changes a user may mean leaves the refusal of the frozen weights' seed.
    with pytest.raises(config_changes.ConfigChangeError, match="model.init_seed") as info:
        config_changes.check_resume(old, new, ["optimizer", "steps"], "runs/R")
    assert "learning_rate" not in str(info.value)

    accepted = config_changes.check_resume(
        old, _config("optimizer.learning_rate=3e-5", "steps=40"), ["optimizer", "steps"], "R"
    )
    assert [c.field for c in accepted] == ["optimizer.learning_rate", "steps"]
    with pytest.raises(config_changes.ConfigChangeError, match="optimiser: not a config field"):
        config_changes.check_resume(old, old, ["optimiser"], "R")


@pytest.mark.parametrize(
    "override,field",
    [
        ("model.param_dtype=bf16", "model.param_dtype"),
        ("model.scan_layers=false", "model.scan_layers"),
        ("data.pairs_per_host=2", "data.pairs_per_host"),
        ("grpo.frozen_modules=[vqmodel]", "grpo.frozen_modules"),
        ("model.preset=janus_pro_1b", "model.preset"),
    ],
)
def test_structure_data_order_and_frozen_weights_never_change(override, field):
    with pytest.raises(config_changes.ConfigChangeError, match=re.escape(field)):
        config_changes.check_resume(_config(), _config(override), [field], "R")


def test_data_path_change_needs_the_flag():
    new = _config("data.path=/elsewhere/pairs.jsonl")
    with pytest.raises(config_changes.ConfigChangeError, match="--allow-config-change data.path"):
        config_changes.check_resume(_config(), new, [], "R")
    assert config_changes.check_resume(_config(), new, ["data.path"], "R")


def test_history_keeps_every_config_and_user_files_are_not_adopted(tmp_path):
    first, second = _config(), _config("steps=40")
    assert run_dir.record_config(tmp_path, first) is not None
    assert run_dir.record_config(tmp_path, first) is None  # unchanged: nothing written
    run_dir.record_config(tmp_path, second)
    history = sorted((tmp_path / run_dir.HISTORY_DIR).iterdir())
    assert [yaml.safe_load(p.read_text())["steps"] for p in history] == [160, 40]
    assert run_dir.saved_config(tmp_path) == second
    run_dir.check_ownership(tmp_path)

    (tmp_path / "config.yaml").write_text("steps: 7  # my edit\n")
    with pytest.raises(run_dir.RunDirError, match="was edited or replaced"):
        run_dir.check_ownership(tmp_path)

    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.yaml").write_text("steps: 5\n")
    with pytest.raises(run_dir.RunDirError, match="holds config.yaml, which pairuni train did"):
        run_dir.check_ownership(user)


def test_learning_rate_in_exponent_notation_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  learning_rate: 3e-5\nreward:\n  generation: {hps: 2E0}\n")
    config = load_run_config([path], ["optimizer.b2=9.99e-1"])
    assert config.optimizer.learning_rate == 3e-5 and config.optimizer.b2 == 0.999
    assert config.reward.generation == {"hps": 2.0}


@pytest.mark.parametrize(
    "override,message",
    [
        ("checkpoint.keep=0", "checkpoint: keep must be >= 1, got 0"),
        ("checkpoint.every=0", "checkpoint: every must be >= 1, got 0"),
        ("logging.every=0", "logging: every must be >= 1, got 0"),
        ("optimizer.learning_rate=.nan", "optimizer.learning_rate: expected a finite number"),
        ("grpo.rollout.cfg_weight=-1", "cfg_weight must be >= 0"),
        ("grpo.rollout.image_temperature=.inf", "expected a finite number"),
    ],
)
def test_config_values_that_would_fail_later_are_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_run_config([], [override])


def test_tiny_yaml_round_trips_through_the_saved_config(tmp_path):
    """What the trainer saves reads back as the same config (the resume check compares them)."""
    run_dir.record_config(tmp_path, config_lib.to_dict(RunConfig()))
    assert load_run_config([tmp_path / "config.yaml"]) == RunConfig()


POD_HOST = textwrap.dedent(
    """
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    from pathlib import Path
    from pairuni_jax import run_dir
    for directory in sys.argv[3:]:
        try:
            lock = run_dir.start_on_lead(Path(directory), {"steps": 1}, ())
            print("result: " + ("holds" if lock is not None else "no lock"), flush=True)
        except run_dir.RunDirError as e:
            print(f"result: error: {e}", flush=True)
    jax.distributed.shutdown()
    """
)


def test_on_a_pod_the_lead_host_locks_and_every_host_learns_a_refusal(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    busy, free = tmp_path / "busy", tmp_path / "free"
    held = run_dir.RunLock.acquire(busy)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    hosts = [
        subprocess.Popen(
            [sys.executable, "-c", POD_HOST, address, str(i), str(busy), str(free)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    # Only the script's own lines: gloo and libraries also write to stdout.
    lead, other = (
        [
            line.removeprefix("result: ")
            for line in h.communicate(timeout=300)[0].splitlines()
            if line.startswith("result: ")
        ]
        for h in hosts
    )
    held.release()
    assert lead[0].startswith(f"error: {busy} is in use by pid {os.getpid()}")
    assert other[0] == f"error: the lead host refused to start the run in {busy}; see its log"
    assert (lead[1], other[1]) == ("holds", "no lock")
    assert (free / run_dir.HISTORY_DIR).is_dir(), "the lead recorded the config"
