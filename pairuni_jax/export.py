"""Hand a trained policy back: a train checkpoint → Orbax model directory → Hugging Face checkpoint.

A train checkpoint holds the trainable parameters (and optimizer state); the frozen ones come from
the run's model source, exactly as on resume. ``load_run_policy`` merges the two (``pairuni eval
--run`` evaluates that model directly); ``export_run`` writes it with
``checkpoint.convert.orbax_to_hf`` in the transformers or DeepSeek layout. A LoRA run
(``model.lora``) holds only adapters: they are merged into the base weights
(W + alpha / rank · A @ B, in fp32), or, with ``adapters_only``, written alone in PEFT's layout
(``checkpoint/lora_adapters.py``).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from pairuni_jax import destinations
from pairuni_jax.checkpoint import convert, lora_adapters, model_dir
from pairuni_jax.dtypes import DType
from pairuni_jax.models import lora
from pairuni_jax.models.janus import Janus
from pairuni_jax.rl import optimizer as opt_lib
from pairuni_jax.rl.train_step import init_train_state
from pairuni_jax.run_config import RunConfig, load_run_config
from pairuni_jax.sharding import MeshConfig, make_mesh
from pairuni_jax.train import load_policy, restore_checkpoint


@dataclasses.dataclass(frozen=True)
class RunPolicy:
    """The policy of a run at one checkpoint step, as one model on the first device."""

    model: Janus
    tokenizer_dir: Path
    step: int
    config: RunConfig


def load_run_policy(run_dir: str | Path, step: int | None = None) -> RunPolicy:
    """The trainable params of ``run_dir``'s checkpoint at ``step`` (default: the latest) merged
    with the frozen ones from the run's model source, exactly as on resume."""
    import jax

    run_dir = Path(run_dir).absolute()
    config = load_run_config([run_dir / "config.yaml"])
    manager = ocp.CheckpointManager(run_dir / "checkpoints")
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"{run_dir / 'checkpoints'} holds no train checkpoint")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ValueError(f"{run_dir / 'checkpoints'} has no step {step}; it has {sorted(steps)}")

    mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    policy, tokenizer_dir = load_policy(config.model, mesh, run_dir)
    if config.model.lora is not None:
        policy = lora.add_adapters(policy, config.model.lora, mesh)
    optimizer = opt_lib.make_optimizer(config.optimizer)
    graphdef, state = init_train_state(policy, config.grpo, optimizer)
    state, _ = restore_checkpoint(manager, step, state)
    model = nnx.merge(graphdef, state.params, state.frozen)
    return RunPolicy(model, Path(tokenizer_dir), step, config)


def export_run(
    run_dir: str | Path,
    dst: str | Path,
    *,
    step: int | None = None,
    format: str = convert.TRANSFORMERS,
    dtype: str | None = None,
    overwrite: bool = False,
    adapters_only: bool = False,
) -> Path:
    """Writes the policy of ``run_dir`` at ``step`` (default: the latest checkpoint) to ``dst``;
    ``adapters_only``: just the LoRA adapters of a LoRA run (transformers names, PEFT layout)."""
    import jax

    run_dir = Path(run_dir).absolute()
    lora_config = load_run_config([run_dir / "config.yaml"]).model.lora
    if adapters_only and lora_config is None:
        raise ValueError(
            f"{run_dir} trained the whole policy (its config has no model.lora): there are no "
            "adapters to write; export without --adapters-only"
        )
    if adapters_only and format != convert.TRANSFORMERS:
        raise ValueError("adapters are written with transformers module names (PEFT's layout)")
    destinations.check(dst, sources=[run_dir], overwrite=overwrite)
    policy = load_run_policy(run_dir, step)
    model = policy.model
    if adapters_only:
        return lora_adapters.save_adapters(
            dst,
            jax.tree.map(np.asarray, lora.adapter_matrices(model)),
            lora_config,
            base=policy.config.model.path,
            dtype=DType.parse(dtype or DType.FP32).dtype,
            overwrite=overwrite,
        )
    if lora_config is not None:
        params = jax.tree.map(np.asarray, lora.merged_params(model, lora_config))
    else:
        params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    stored = np.dtype(jax.tree.leaves(params)[0].dtype).name
    meta = {
        "kind": convert.KIND,
        "janus": model.config.to_dict(),
        "dtype": stored,
        "source": f"{run_dir} step {policy.step}",
    }
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "model"
        model_dir.save_model_dir(model_path, params, meta, convert.side_files(policy.tokenizer_dir))
        return convert.orbax_to_hf(model_path, dst, format=format, dtype=dtype, overwrite=overwrite)
