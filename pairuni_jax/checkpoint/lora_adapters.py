"""LoRA adapters in PEFT's layout: ``adapter_model.safetensors`` + ``adapter_config.json``.

What ``PeftModel.from_pretrained(JanusForConditionalGeneration, DIR)`` (or transformers'
``model.load_adapter(DIR)``) loads onto the base model. For each adapted Linear, per layer:

====================================================  ================  =========================
``base_model.model.<module>.lora_A.weight``           [R, I]            A transposed (torch layout)
``base_model.model.<module>.lora_B.weight``           [O, R]            B transposed
====================================================  ================  =========================

``<module>`` is the transformers name of the Linear (``model.language_model.layers.3.self_attn.
q_proj``, ``lm_head``, ``model.generation_head.proj_out``); ``adapter_config.json`` lists them as
``target_modules`` with ``r`` = R and ``lora_alpha`` = alpha, so PEFT adds
``(lora_alpha / r) · B @ A`` to each weight, as the JAX policy does (``models/lora.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pairuni_jax.checkpoint import hf_writer, janus_mapping, model_dir
from pairuni_jax.models.lora import LoraConfig, ModulePath

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PREFIX = "base_model.model."


def hf_module_names(path: ModulePath, layers: int | None) -> list[str]:
    """The transformers module name(s) of a Flax Linear path: one per layer when stacked."""
    indices = [None] if layers is None else range(layers)
    return [janus_mapping.join_hf_key(path, i, "weight").removesuffix(".weight") for i in indices]


def adapter_tensors(
    adapters: dict[ModulePath, tuple[np.ndarray, np.ndarray]], dtype: np.dtype
) -> dict[str, np.ndarray]:
    """PEFT's keys → arrays in ``dtype`` for (A, B) by Flax module path (stacked: [L, ...])."""
    out = {}
    for path, (a, b) in adapters.items():
        stacked = any(path[: len(p)] == p for p in janus_mapping.STACKED_PREFIXES)
        names = hf_module_names(path, a.shape[0] if stacked else None)
        a_layers, b_layers = (a, b) if stacked else (a[None], b[None])
        for name, a_i, b_i in zip(names, a_layers, b_layers):
            out[f"{PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(a_i.T, dtype)
            out[f"{PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(b_i.T, dtype)
    return out


def adapter_config(
    tensors: dict[str, np.ndarray], config: LoraConfig, base: str | None
) -> dict[str, Any]:
    suffix = ".lora_A.weight"
    modules = sorted(k[len(PREFIX) : -len(suffix)] for k in tensors if k.endswith(suffix))
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": 0.0,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }


def save_adapters(
    dst: str | Path,
    adapters: dict[ModulePath, tuple[np.ndarray, np.ndarray]],
    config: LoraConfig,
    *,
    base: str | None = None,
    dtype: Any = np.float32,
    overwrite: bool = False,
) -> Path:
    """Writes ``adapters`` (see ``adapter_tensors``) as a PEFT adapter directory ``dst``.

    base: recorded as ``base_model_name_or_path`` (the run's model source).
    """
    tensors = adapter_tensors(adapters, np.dtype(dtype))
    out = [
        hf_writer.OutTensor(key, value.shape, value.dtype, lambda value=value: value)
        for key, value in tensors.items()
    ]
    with model_dir.atomic_directory(dst, overwrite=overwrite) as tmp:
        hf_writer.write_safetensors(tmp / ADAPTER_WEIGHTS, out)
        text = json.dumps(adapter_config(tensors, config, base), indent=2) + "\n"
        (tmp / ADAPTER_CONFIG).write_text(text)
    return Path(dst)
