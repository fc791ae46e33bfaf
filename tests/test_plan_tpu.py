"""``pairuni plan`` on the TPU compiler (libtpu, compile-only devices: no TPU attached).

Runs where libtpu is installed (``pip install -e '.[test,tpu]'``, as CI does); skipped where it is
not, since then there is no TPU compiler to test."""

import jax
import jax.numpy as jnp
import pytest

pytest.importorskip(
    "libtpu", reason="libtpu (the TPU compiler) is not installed: pip install -e '.[tpu]'"
)

from jax.experimental import topologies  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from pairuni_jax import plan  # noqa: E402
from pairuni_jax.run_config import load_run_config  # noqa: E402

# The test session's persistent compilation cache stores the compile-only TPU executables but
# cannot load them back without a TPU client (it then compiles again): not an error here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Error reading persistent compilation cache entry:UserWarning"
)


def _v5p_8() -> list:
    return list(topologies.get_topology_desc("v5p:2x2x1", platform="tpu").devices)


def test_tiny_step_on_the_tpu_compiler_fits_and_counts_what_the_model_computes():
    target = plan.Slice.parse("v5p-8")
    devices = plan.tpu_topology_devices(target)
    config = load_run_config(
        ["configs/tiny.yaml"], ["mesh.data=1", "mesh.fsdp=4", "data.pairs_per_host=4"]
    )
    result = plan.make_plan(config, devices, target="v5p-8", chip=target.chip)
    assert result.platform == "tpu" and result.fits
    counted, a, n = result.compiled_counts.flops, result.analytic, result.num_devices
    # Every loop's trip count comes from the loop itself (TPU loops carry no known_trip_count).
    assert {loop.source for loop in result.compiled_counts.loops} <= {"derived", "bounded"}
    assert counted["rollout"] == pytest.approx((a.rollout - a.rewards) / n, rel=0.1)
    assert counted["training"] == pytest.approx((a.training + a.recompute) / n, rel=0.1)
    # The TPU compiler runs the tiny VQ decoder's 32-pixel convolutions as overlapping column
    # strips (5 output columns computed per 4 kept): more work than the model's, never less.
    assert a.rewards / n < counted["rewards"] < 1.4 * a.rewards / n
    assert set(result.decode_traffic) == {"answers", "images"}


def test_tpu_matmuls_and_async_collectives_are_counted_once_each():
    devices = _v5p_8()
    mesh = jax.make_mesh((4,), ("x",), (jax.sharding.AxisType.Auto,), devices=devices)
    b, m, k, n = 6, 64, 256, 128
    x = jax.ShapeDtypeStruct(
        (4 * b, m, k), jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec("x"))
    )
    w = jax.ShapeDtypeStruct(
        (4 * b, k, n), jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec("x"))
    )

    def fn(x, w):
        y = jnp.einsum("bmk,bkn->bmn", x, w)  # batched: a dilated convolution on TPU
        return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, PartitionSpec()))

    with jax.set_mesh(mesh):
        text = jax.jit(fn).lower(x, w).compile().as_text()
    counts = plan.count_program(text, 1)
    assert counts.flops["rollout"] == 2 * b * m * k * n  # one device's batch shard
    # The replicated result is gathered once: 3/4 of it (or all of it) arrives per device.
    result = 4 * b * m * n * 2
    assert counts.collectives["rollout"] >= 1
    assert 0.75 * result <= counts.collective_bytes["rollout"] <= result


def test_every_tpu_slice_has_one_compile_only_device_per_chip():
    """As its TPU VM shows it: v4 and v5p chips are one device each (megacore), not two."""
    for name in plan.TPU_TOPOLOGIES:
        target = plan.Slice.parse(name)
        assert len(plan.tpu_topology_devices(target)) == target.chips, name
