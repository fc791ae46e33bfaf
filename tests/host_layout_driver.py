"""One process of a 2-process x 4-CPU-device cluster that checks how a global batch is laid over
the hosts (run by ``tests/test_multiprocess.py``; prints one JSON line of findings).

    python tests/host_layout_driver.py PORT PROCESS_ID
"""

import json
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

from pairuni_jax import cluster, sharding, train


def error_of(fn) -> str | None:
    try:
        fn()
    except cluster.HostLayoutError as e:
        return str(e)
    return None


def main(port: str, process_id: str) -> None:
    config = cluster.ClusterConfig(f"127.0.0.1:{port}", 2, int(process_id), timeout_s=60)
    cluster.initialize(config, distributed=None)
    found: dict = {"devices": jax.device_count(), "processes": jax.process_count()}

    # A mesh whose batch axis alternates the two processes' devices: each process holds every
    # other row, and its local rows must land there.
    devices = sorted(jax.devices(), key=lambda d: (d.id % jax.local_device_count(), d.id))
    mesh = jax.sharding.Mesh(np.array(devices).reshape(1, 8, 1), sharding.MESH_AXES)
    batch = train.batch_sharding(mesh, 8)
    host = train.host_slice(batch, 4, mesh)
    found["rows"] = list(host.rows)
    whole = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
    local = whole[list(host.rows)]
    assembled = jax.make_array_from_process_local_data(batch, local, whole.shape)
    found["assembled_equals_global"] = bool(
        np.array_equal(multihost_utils.process_allgather(assembled, tiled=True), whole)
    )

    default = sharding.make_mesh(sharding.MeshConfig())
    found["default_rows"] = list(
        train.host_slice(train.batch_sharding(default, 8), 4, default).rows
    )
    # 6 pairs over 8 batch shards; a tensor axis over both hosts puts every row on both.
    found["indivisible_batch"] = error_of(lambda: train.batch_sharding(default, 6))
    across = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1, tensor=8))
    found["tensor_across_hosts"] = error_of(
        lambda: train.host_slice(train.batch_sharding(across, 8), 4, across)
    )
    print("FOUND " + json.dumps(found), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
