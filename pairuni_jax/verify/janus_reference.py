"""The reference side: transformers' ``JanusForConditionalGeneration`` on the same checkpoint.

A transformers-layout checkpoint loads with ``from_pretrained`` (transformers' own key handling).
A DeepSeek-layout one has no transformers loader: the model is built from the transformers config
the converter derives (``hf_config.transformers_config``) and its tensors are streamed in under
the names ``janus_mapping`` gives them, as the converter reads them. The reference always runs in
fp32 (``--dtype bf16`` measures the JAX port's bf16 drift from it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import transformers
from tqdm import tqdm

from pairuni_jax.checkpoint import hf_config, hf_reader
from pairuni_jax.models.janus import JanusConfig
from pairuni_jax.verify.janus_io import JanusInputs, JanusOutputs, until_eos


def load_reference(
    ckpt: hf_reader.HFCheckpoint, config: JanusConfig, device: str = "cpu"
) -> transformers.JanusForConditionalGeneration:
    """The checkpoint in transformers, fp32, eval mode, on ``device``."""
    if ckpt.format == hf_reader.TRANSFORMERS:
        model = transformers.JanusForConditionalGeneration.from_pretrained(
            ckpt.directory, dtype=torch.float32
        )
    else:
        model = _from_deepseek(ckpt, config)
    if device == "cuda":  # fp32 means fp32: no TF32 in matmuls and convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    # Plain greedy decoding on both sides: the checkpoint's generation_config.json (repetition
    # penalties, ...) would otherwise fill in whatever ``reference_outputs`` leaves unset.
    model.generation_config = transformers.GenerationConfig()
    return model.eval().to(device)


def _from_deepseek(
    ckpt: hf_reader.HFCheckpoint, config: JanusConfig
) -> transformers.JanusForConditionalGeneration:
    from transformers.initialization import no_init_weights

    hf = hf_config.transformers_config(config, "float32")
    with no_init_weights():
        model = transformers.JanusForConditionalGeneration(hf).float()
    targets = model.state_dict()
    shapes = ckpt.hf_shapes()
    missing = sorted(set(targets) - set(shapes))
    unexpected = sorted(set(shapes) - set(targets))
    if missing or unexpected:
        raise hf_reader.CheckpointError(
            f"{ckpt.directory}: the DeepSeek keys do not map onto transformers' Janus: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for key, value in tqdm(
            ckpt.iter_hf_tensors(), total=len(shapes), unit="tensor", desc="reference load"
        ):
            targets[key].copy_(torch.from_numpy(np.asarray(value, np.float32)))
    return model


class _Progress(transformers.LogitsProcessor):
    """Ticks a progress bar once per generated token (returns the scores unchanged)."""

    def __init__(self, bar: tqdm):
        self.bar = bar

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.bar.update()
        return scores


def _generate(model, ids: torch.Tensor, steps: int, desc: str, **kwargs) -> torch.Tensor:
    with tqdm(total=steps, unit="token", desc=desc) as bar:
        processors = transformers.LogitsProcessorList([_Progress(bar)])
        return model.generate(
            inputs=ids, attention_mask=torch.ones_like(ids), logits_processor=processors, **kwargs
        )


def reference_outputs(
    model: transformers.JanusForConditionalGeneration, inputs: JanusInputs
) -> JanusOutputs:
    """Every reference output of the comparison (see ``JanusOutputs``)."""
    device = model.device
    ids = inputs.ids
    question = torch.from_numpy(inputs.question_ids).long().to(device)
    pixels = torch.from_numpy(np.ascontiguousarray(inputs.pixels.transpose(0, 3, 1, 2))).to(device)
    image_prompt = torch.from_numpy(inputs.image_prompt_ids).long().to(device)
    special = dict(bos_token_id=ids.bos, eos_token_id=ids.eos, pad_token_id=ids.pad)
    with torch.inference_mode():
        logits = model(
            input_ids=question, pixel_values=pixels, attention_mask=torch.ones_like(question)
        ).logits
        answer = _generate(
            model,
            question,
            inputs.max_new_tokens,
            "reference answer",
            pixel_values=pixels,
            generation_mode="text",
            generation_config=transformers.GenerationConfig(
                do_sample=False, max_length=question.shape[1] + inputs.max_new_tokens, **special
            ),
        )[0, question.shape[1] :]
        num_tokens = model.model.vision_model.config.num_image_tokens
        image_tokens = _generate(
            model,
            image_prompt,
            num_tokens,
            "reference image tokens",
            generation_mode="image",
            generation_config=transformers.GenerationConfig(
                do_sample=False,
                guidance_scale=inputs.cfg_weight,
                generation_kwargs={"boi_token_id": ids.begin_of_image},
                **special,
            ),
        )
        decoded = model.model.vqmodel.decode(image_tokens)
        vision = model.model.get_image_features(pixels)
    decoded = _numpy(decoded)[0].transpose(1, 2, 0)
    return JanusOutputs(
        text_logits=_numpy(logits)[0],
        answer=until_eos(_numpy(answer), ids.eos),
        image_tokens=_numpy(image_tokens)[0].astype(np.int32),
        decoded=decoded,
        own_image=decoded,
        vision_features=_numpy(vision.last_hidden_state)[0],
        aligned=_numpy(vision.pooler_output)[0],
    )


def _numpy(x: torch.Tensor) -> np.ndarray:
    x = x.detach().cpu()
    return (x.float() if x.is_floating_point() else x).numpy()
