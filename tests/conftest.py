"""Test set-up: eight fake CPU devices (set before JAX loads) and fp32 matmuls."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# CPU tests stay on CPU when libtpu is installed (the tpu extra); the TPU-compiler tests ask for
# compile-only TPU devices explicitly. Two xdist workers may each load libtpu to compile.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Tests build the same programs several times (a trainer and its resumed twin, the same tiny step
# in several tests): a persistent compilation cache shared by the xdist workers compiles each once.
jax.config.update(
    "jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "pairuni-jax-test-cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


@pytest.fixture(scope="session")
def mesh():
    """A (data=2, fsdp=4, tensor=1) mesh over the eight fake devices."""
    from pairuni_jax import sharding

    return sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4, tensor=1))
