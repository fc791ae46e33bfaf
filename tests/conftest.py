"""Test set-up: eight fake CPU devices (set before JAX loads) and fp32 matmuls."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def mesh():
    """A (data=2, fsdp=4, tensor=1) mesh over the eight fake devices."""
    from pairuni_jax import sharding

    return sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4, tensor=1))
