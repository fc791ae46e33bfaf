"""``pairuni plan``: the abstract step compiles, its table agrees with XLA, and a step that
does not fit exits non-zero with advice."""

import argparse
import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from pairuni_jax import flops, plan, sharding
from pairuni_jax.commands import plan as plan_command
from pairuni_jax.models import lora
from pairuni_jax.models.clip import CLIPConfig
from pairuni_jax.models.janus import Janus, JanusConfig
from pairuni_jax.plan import model as plan_model
from pairuni_jax.plan import report, slices
from pairuni_jax.rollout.layout import DecodeLayout
from pairuni_jax.run_config import load_run_config

TINY = ["mesh.data=2", "mesh.fsdp=4", "data.pairs_per_host=4"]  # 4 pairs: a quicker compile
# The random tiny Janus and CLIP (the tests build the same models to compare against).
RANDOM_TINY = [*TINY, "model.path=null", "reward.path=null"]


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    plan_command.register(parser.add_subparsers())
    args = parser.parse_args(["plan", *argv])
    return args.func(args)


def _bytes(line: str, name: str) -> int:
    return int(re.search(rf"{name} (\d+)", line).group(1))


def test_tiny_plan_table_agrees_with_memory_analysis(capsys):
    assert _cli(["--config", "configs/tiny.yaml", "--devices", "8", *TINY]) == 0
    out = capsys.readouterr().out
    assert "memory per device" in out and "FLOPs per step" in out
    assert "no HBM size known" in out
    line = next(x for x in out.splitlines() if "memory_analysis() bytes" in x)

    # The same step, built independently, compiled, and asked for its memory.
    config = load_run_config(["configs/tiny.yaml"], TINY)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:8])
    run = plan.build_abstract_run(config, mesh)
    with jax.set_mesh(mesh):
        lowered = run.lower()
        memory = lowered.compile().memory_analysis()
    assert _bytes(line, "arguments") == memory.argument_size_in_bytes
    assert _bytes(line, "outputs") == memory.output_size_in_bytes
    assert _bytes(line, "aliased") == memory.alias_size_in_bytes
    assert _bytes(line, "temporaries") == memory.temp_size_in_bytes
    # The argument rows of the table add up to XLA's argument bytes, and are the table's rows.
    groups = run.argument_bytes(lowered)
    assert sum(groups.values()) == memory.argument_size_in_bytes
    for name, size in groups.items():
        assert re.search(rf"{re.escape(name)} +{size / 2**20:.2f} MiB", out), name
    # The donated state comes back in place: every state byte is aliased.
    state_bytes = sum(v for k, v in groups.items() if "reward" not in k and "batch" not in k)
    assert memory.alias_size_in_bytes == state_bytes


def test_plan_that_does_not_fit_exits_nonzero_with_advice(capsys):
    code = _cli(["--config", "configs/tiny.yaml", "--devices", "8", "--hbm-gib", "0.004", *TINY])
    assert code == 1
    captured = capsys.readouterr()
    assert "DOES NOT FIT" in captured.out
    err = captured.err
    assert err.startswith("does not fit:") and "Biggest consumers:" in err
    assert "temporaries (activations, KV caches, gradients)" in err
    assert "try grpo.micro_batches=2" in err and "try model.dtype=bf16" in err
    assert "Each of these alone, estimated from the table:" in err
    assert "model.param_dtype=bf16 (halves parameters and Adam moments): about" in err


# libtpu's words when a step's temporaries alone exceed HBM (7B full fine-tuning on v4-8).
TPU_REFUSAL = (
    "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
    "temporaries (43.32G) exceeds available HBM (30.75G)."
)


def test_a_step_the_compiler_refuses_is_a_plan_that_does_not_fit(monkeypatch, tmp_path, capsys):
    """The TPU compiler raises instead of compiling a step whose temporaries exceed HBM; the
    plan says it does not fit, with what is known of its memory and what to try (exit 1)."""

    def refuse(self, *args, **kwargs):
        raise jax.errors.JaxRuntimeError(TPU_REFUSAL)

    monkeypatch.setattr(jax.stages.Lowered, "compile", refuse)
    out_json = tmp_path / "plan.json"
    argv = ["--config", "configs/tiny.yaml", "--devices", "8", "--json", str(out_json), *TINY]
    assert _cli(argv) == 1
    out = capsys.readouterr().out
    assert "the compiler refused the step" in out and "does not fit: at least" in out
    assert "try model.lora.rank=16" in out and TPU_REFUSAL in out
    saved = json.loads(out_json.read_text())
    assert saved["fits"] is False and saved["compiler_refused"] == TPU_REFUSAL
    assert saved["compiler"] == "cpu"  # the devices compiled for (fake CPU ones here)
    memory = saved["memory_bytes"]
    assert memory[report.TEMPORARIES] == round(43.32 * 2**30)
    config = load_run_config(["configs/tiny.yaml"], TINY)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:8])
    run = plan.build_abstract_run(config, mesh)
    with jax.set_mesh(mesh):
        arguments = run.argument_bytes(run.lower())
    assert memory["total_at_least"] == sum(arguments.values()) + round(43.32 * 2**30)
    # Any other compiler failure is not a verdict on memory: it propagates.
    monkeypatch.setattr(
        jax.stages.Lowered,
        "compile",
        lambda self: (_ for _ in ()).throw(jax.errors.JaxRuntimeError("INTERNAL: boom")),
    )
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        _cli(["--config", "configs/tiny.yaml", "--devices", "8", *TINY])


def test_bad_config_exits_2(capsys):
    # 2 pairs x 3 rollouts = 6 rows do not split over 8 batch shards.
    argv = [
        "--devices",
        "8",
        "mesh.fsdp=8",
        "data.pairs_per_host=2",
        "grpo.rollout.num_und_rollouts=3",
    ]
    assert _cli(argv) == 2
    assert "rollout rows do not split" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_plan():
    # The random tiny world (the demo world's 16-px VQ is counted 17 % off: its own issue).
    config = load_run_config(["configs/tiny.yaml"], RANDOM_TINY)
    return plan.make_plan(config, jax.devices()[:8], target="test", chip=flops.CHIPS["v5e"])


def test_tiny_plan_flops_agree_with_the_compiled_step(tiny_plan):
    result = tiny_plan
    counted = result.compiled_counts.flops
    a, n = result.analytic, result.num_devices
    # Sampling and rewards together. Their split is not yet right on XLA:CPU's HLO (tiny:
    # rollout 58.3 vs 41.8 MFLOP analytic per device, rewards 559 vs 534: ops of one phase named
    # in the other); tests/test_plan_tpu.py holds it on the TPU compiler's.
    assert counted["rollout"] + counted["rewards"] == pytest.approx(a.rollout / n, rel=0.1)
    assert counted["training"] == pytest.approx((a.training + a.recompute) / n, rel=0.1)
    assert result.fits
    seconds = result.step_seconds()
    total, bounds = seconds["training"]
    assert bounds["compute"] == pytest.approx(a.training / (n * 197e12 * 0.4))
    assert total == max(bounds.values())


def test_lora_plan_holds_adapters_in_adam_and_counts_no_weight_gradients():
    """With ``model.lora`` the plan builds the adapted policy (abstractly): its trainable and
    frozen bytes are those of the adapters and the bf16 base that ``lora.add_adapters`` places
    on the same mesh, Adam holds two moments of the adapters only, and the compiled training
    FLOPs match the analytic count without weight gradients (rank 1, so the adapters' own
    matmuls, which the analytic count leaves out, stay a few % of tiny's)."""
    overrides = [*RANDOM_TINY, "model.lora.rank=1", "model.lora.alpha=2"]
    config = load_run_config(["configs/tiny.yaml"], overrides)
    devices = jax.devices()[:8]
    result = plan.make_plan(config, devices, target="test", chip=None)

    m = config.model
    mesh = sharding.make_mesh(config.mesh, devices)
    policy = sharding.create_sharded(
        lambda: Janus(JanusConfig.tiny(), param_dtype=m.param_dtype.dtype, rngs=nnx.Rngs(0)), mesh
    )
    policy = lora.add_adapters(policy, m.lora, mesh)

    def per_device(state):
        return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))

    adapters = per_device(nnx.state(policy, nnx.LoRAParam))
    args = result.arguments
    assert args["trainable parameters"] == adapters
    assert args["frozen parameters"] == per_device(nnx.state(policy, nnx.Not(nnx.LoRAParam)))
    full = plan.make_plan(
        load_run_config(["configs/tiny.yaml"], RANDOM_TINY), devices, target="test", chip=None
    )
    # Adam's two moments of each trainable parameter, and the same scalars (step, counts).
    scalars = full.arguments["optimizer state"] - 2 * full.arguments["trainable parameters"]
    assert args["optimizer state"] == 2 * adapters + scalars
    # The demo's KL anchor keeps a reference copy of the trainable parameters: the adapters.
    assert args["reference parameters"] == adapters
    # model.param_dtype=bf16 would halve the fp32 adapters, their moments and their reference
    # copy, not the bf16 base.
    (estimate,) = (t for knob, t in report.fixes(result) if "param_dtype" in knob)
    halved = adapters + args["optimizer state"] + args["reference parameters"]
    assert estimate == result.total_bytes - halved // 2
    lora_flops, n = result.analytic, result.num_devices
    assert lora_flops.training < 0.8 * full.analytic.training  # no weight gradients
    assert result.compiled_counts.flops["training"] == pytest.approx(
        (lora_flops.training + lora_flops.recompute) / n, rel=0.1
    )


def test_count_program_multiplies_loops_and_splits_the_gradient():
    b, d, layers, steps = 8, 64, 5, 7
    x, w = jnp.ones((b, d)), jnp.ones((layers, d, d))

    def forward(x, w):
        return jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)[0]

    def fn(x, w, limit):
        grads = jax.grad(lambda w: forward(x, w).sum())(w)
        state = jax.lax.while_loop(  # a traced bound: no static trip count
            lambda s: s[0] < limit, lambda s: (s[0] + 1, s[1] @ w[0]), (0, x)
        )
        return grads, state[1]

    limit = jnp.int32(3)
    counts = plan.count_program(jax.jit(fn).lower(x, w, limit).compile().as_text(), steps)
    matmul = 2 * b * d * d
    assert counts.unknown_loops == 1
    assert counts.flops["rollout"] == steps * matmul
    # forward, then the backward's two matmuls per layer (to the carry and to the weight)
    assert counts.flops["training"] == 3 * layers * matmul


def test_trip_counts_come_from_the_loop_when_the_compiler_does_not_say():
    """What the TPU compiler writes: no ``known_trip_count``. The count is derived from the
    loop's state (a scan of 5, a fori_loop from 2 to 11 by 3), an EOS-style loop is counted at
    its bound, and only a loop bound by data stays unknown."""
    b, d = 4, 32
    x, w = jnp.ones((b, d)), jnp.ones((5, d, d))

    def fn(x, w, limit, done):
        scanned = jax.lax.scan(lambda c, wi: (c @ wi, None), x, w)[0]
        strided = jax.lax.fori_loop(0, 3, lambda i, c: c @ w[i], x)  # 3 trips
        counted = jax.lax.while_loop(
            lambda s: s[0] < 11, lambda s: (s[0] + 3, s[1] @ w[0]), (2, x)
        )[1]  # 2, 5, 8: 3 trips
        eos = jax.lax.while_loop(  # stops on data, at most 7 trips
            lambda s: (s[0] < 7) & ~s[2], lambda s: (s[0] + 1, s[1] @ w[0], done), (0, x, False)
        )[1]
        unknown = jax.lax.while_loop(
            lambda s: s[0] < limit, lambda s: (s[0] + 1, s[1] @ w[0]), (0, x)
        )
        return scanned, strided, counted, eos, unknown[1]

    text = jax.jit(fn).lower(x, w, jnp.int32(3), jnp.bool_(False)).compile().as_text()
    stripped = re.sub(r'"known_trip_count":\{"n":"\d+"\},?', "", text)
    assert "known_trip_count" in text and "known_trip_count" not in stripped
    counts = plan.count_program(stripped, 100)
    matmul = 2 * b * d * d
    assert counts.flops["rollout"] == (5 + 3 + 3 + 7 + 100) * matmul
    sources = sorted(loop.source for loop in counts.loops if loop.per_trip.flops["rollout"])
    assert sources == ["bounded", "default", "derived", "derived", "derived"]
    assert plan.count_program(text, 100).flops["rollout"] == counts.flops["rollout"]


def test_dilated_convolutions_count_only_the_taps_on_real_inputs():
    # A 2-tap window over an input dilated by 2 (a zero between neighbours) always covers exactly
    # one real element: 2L - 2 outputs x 1 tap x channels, not 2 taps each.
    length, c_in, c_out = 10, 3, 5
    x, k = jnp.ones((1, c_in, length)), jnp.ones((c_out, c_in, 2))

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1,), [(0, 0)], lhs_dilation=(2,))

    counts = plan.count_program(jax.jit(conv).lower(x, k).compile().as_text(), 1)
    assert counts.flops["rollout"] == 2 * (2 * length - 2) * c_in * c_out


def test_plan_names_the_replicated_decode_layout_when_it_would_fit(tiny_plan):
    """A step that fits with the ``train`` layout while its decode loops gather weights: the plan
    says what the replicated copy would take (``auto`` only spends a quarter of HBM on it)."""
    assert tiny_plan.layout is DecodeLayout.REPLICATED  # tiny: auto replicates
    assert report.faster_decode(tiny_plan) is None
    gathering = {
        "answers": plan_model.DecodeTraffic(2**20, 12),
        "images": plan_model.DecodeTraffic(0, 0),
    }
    train = dataclasses.replace(
        tiny_plan, layout=DecodeLayout.TRAIN, decode_copy=1000, decode_traffic=gathering
    )
    with_copy = train.total_bytes - 1000 + tiny_plan.replicated_copy
    assert tiny_plan.replicated_copy > 1000
    assert report.faster_decode(train) == with_copy
    assert "faster: grpo.rollout.layout=replicated" in report.format_plan(train)
    assert report.plan_json(train)["total_bytes_with_replicated_decode"] == with_copy
    # It would not fit, the step does not fit, or the loops move no weights: nothing to say.
    assert report.faster_decode(dataclasses.replace(train, hbm_bytes=with_copy - 1)) is None
    assert report.faster_decode(dataclasses.replace(train, hbm_bytes=train.total_bytes - 1)) is None
    quiet = {side: plan_model.DecodeTraffic(0, 0) for side in gathering}
    assert report.faster_decode(dataclasses.replace(train, decode_traffic=quiet)) is None
    assert "faster:" not in report.format_plan(dataclasses.replace(train, decode_traffic=quiet))


def test_plan_json_has_what_scripts_read(tiny_plan, tmp_path):
    path = tmp_path / "plan.json"
    plan.write_json(tiny_plan, path)
    data = json.loads(path.read_text())
    assert data["compiler"] == "cpu" and data["fits"] is True
    assert data["memory_bytes"]["total"] == tiny_plan.total_bytes
    assert set(data["memory_bytes"]) >= {"trainable parameters", "optimizer state", "total"}
    a, n = tiny_plan.analytic, tiny_plan.num_devices
    assert data["flops"]["analytic"]["model"] == pytest.approx(a.model / n)
    assert data["flops"]["analytic"]["remat"] == pytest.approx(a.recompute / n)
    assert set(data["flops"]["analytic"]["phases"]) >= {"answer_decode", "image_decode", "rewards"}
    assert data["flops"]["compiled"] == tiny_plan.compiled_counts.flops
    assert set(data["collective_bytes"]) == {"rollout", "rewards", "training", "per_decoded_token"}
    assert set(data["collective_bytes"]["per_decoded_token"]) == {"answers", "images"}
    assert data["step_seconds"]["total"] > 0
    assert data["decode_layout"] == "replicated"  # auto, with tiny weights


def test_json_destination_is_checked_before_compiling(tmp_path, capsys):
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"mine": 1}')
    argv = ["--config", "configs/tiny.yaml", "--devices", "8", *TINY]
    assert _cli([*argv, "--json", str(foreign)]) == 2
    assert "is not a plan this command wrote" in capsys.readouterr().err
    assert foreign.read_text() == '{"mine": 1}'
    assert _cli([*argv, "--json", str(tmp_path / "missing" / "plan.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_mesh_that_does_not_fit_the_slice_is_a_named_error(capsys):
    assert _cli(["--config", "configs/tiny.yaml", "--devices", "8", "--mesh", "data=1,fsdp=3"]) == 2
    err = capsys.readouterr().err
    assert "mesh data=1, fsdp=3, tensor=1 does not fit the 8 devices" in err


def test_libtpu_must_be_the_one_jax_pins():
    requires = ['libtpu==0.0.42.*; extra == "tpu"', "numpy>=1.26"]
    assert slices.libtpu_mismatch("0.0.42.1", requires) is None
    problem = slices.libtpu_mismatch("0.0.43", requires)
    assert "libtpu 0.0.43 is installed" in problem and f"jax {jax.__version__}" in problem
    assert "pip install 'libtpu==0.0.42.*'" in problem
    assert slices.libtpu_mismatch("0.0.43", ["numpy"]) is None  # jax pins no libtpu


def test_slices():
    assert plan.Slice.parse("v5e-64") == plan.Slice("v5e-64", flops.CHIPS["v5e"], 64, 16)
    assert plan.Slice.parse("v5e-8").hosts == 1
    assert plan.Slice.parse("v5p-16") == plan.Slice("v5p-16", flops.CHIPS["v5p"], 8, 2)
    assert plan.Slice.parse("v4-8") == plan.Slice("v4-8", flops.CHIPS["v4"], 4, 1)
    assert plan.Slice.parse("h100-8") == plan.Slice("h100-8", flops.CHIPS["h100"], 8, 1)
    with pytest.raises(plan.UnknownTopologyError, match="expected <chip>-<size>"):
        plan.Slice.parse("v5litepod-8")
    with pytest.raises(plan.UnknownTopologyError, match="no such v5p slice; known: v5p-8"):
        plan.Slice.parse("v5p-12")


def test_mesh_flag():
    assert sharding.parse_mesh_flag("data=2, fsdp=-1") == {"data": 2, "fsdp": -1}
    for bad in ("fsdp:4", "data=two", "pipeline=2"):
        with pytest.raises(ValueError, match="--mesh .*: expected data=D,fsdp=F,tensor=T"):
            sharding.parse_mesh_flag(bad)


def test_configs_come_from_the_model_directory_or_a_named_preset(tmp_path):
    missing = str(tmp_path / "janus-pro-7b")
    with pytest.raises(ValueError, match="model.preset=janus_pro_1b or janus_pro_7b"):
        plan.policy_config(load_run_config([], [f"model.path={missing}"]))
    config = load_run_config([], [f"model.path={missing}", "model.preset=janus_pro_7b"])
    model, source = plan.policy_config(config)
    assert model == JanusConfig.janus_pro_7b() and "not here" in source
    hps, _ = plan.reward_config(load_run_config([], [f"reward.path={tmp_path / 'hps'}"]))
    assert hps == CLIPConfig.vit_h_14()
    assert plan.reward_config(load_run_config([], ["reward.path=null"]))[0] == CLIPConfig.tiny()
