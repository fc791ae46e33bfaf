"""``pairuni eval``: multiple-choice accuracy and generation reward of a model or a training run.

    pairuni eval --model DIR | --run RUN_DIR [--step N] \\
        [--understanding FILE.jsonl|FILE.tsv] [--generation PROMPTS] [--reward DIR] --out DIR \\
        [--batch-size 8 --max-new-tokens 64 --images-per-prompt 4 --cfg 5 --temperature 1 \\
         --seed 0 --max-questions N --max-prompts N --answer-tag OPEN CLOSE --on-error skip]

Questions are answered greedily with the Janus chat template (as ``pairuni answer --greedy``) and
scored by the accuracy reward's letter reading; prompts get K CFG images each, scored by HPS with
``--reward`` (with ``--run``, the run's reward model by default). Writes ``DIR/report.json``,
``DIR/predictions.jsonl``, ``DIR/generations.jsonl``, ``DIR/images/`` and ``DIR/grid.png``,
prints a table and the throughput. Input formats: ``pairuni_jax/evaluation/inputs.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from pairuni_jax.commands import model_loading


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="MC accuracy and HPS of a model or a run", description=__doc__.splitlines()[0]
    )
    model_loading.add_model_arguments(parser, required=False)
    parser.add_argument("--run", help="a `pairuni train` run directory (instead of --model)")
    parser.add_argument("--step", type=int, help="the run's checkpoint step (default: latest)")
    parser.add_argument("--understanding", help="questions: pair-format .jsonl or VLMEvalKit .tsv")
    parser.add_argument("--generation", help="prompts: .jsonl (prompt, tag) or one per line")
    parser.add_argument("--reward", help="HPS reward directory (`pairuni convert hpsv2`)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation")
    parser.add_argument("--batch-size", type=int, default=8, help="questions (images) per batch")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="default 64")
    parser.add_argument("--images-per-prompt", type=int, default=4, help="K (default 4)")
    parser.add_argument("--cfg", type=float, default=5.0, help="guidance weight (default 5)")
    parser.add_argument("--temperature", type=float, default=1.0, help="image sampling (1)")
    parser.add_argument("--max-questions", type=int, help="only the first N questions")
    parser.add_argument("--max-prompts", type=int, help="only the first N prompts")
    parser.add_argument("--image-root", help="where relative question image paths resolve")
    parser.add_argument("--answer-tag", nargs=2, metavar=("OPEN", "CLOSE"), help="e.g. <answer>")
    parser.add_argument("--option-letters", help="answer letters (default ABCDEFGH)")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    parser.set_defaults(func=run)


@dataclasses.dataclass
class Policy:
    """The model to evaluate and what comes with it."""

    model: Any
    encoder: Any
    name: str
    step: int | None
    dtype: str
    letters: str
    answer_tag: tuple[str, str] | None
    run_config: Any = None


def run(args: argparse.Namespace) -> int:
    from flax import nnx

    from pairuni_jax.evaluation import report as report_lib
    from pairuni_jax.evaluation.evaluator import EvalSettings, Evaluator
    from pairuni_jax.evaluation.inputs import read_prompts, read_questions, skipped_entries
    from pairuni_jax.rewards.accuracy import OptionLetterTable

    out = Path(args.out)
    try:
        _check_arguments(args, out)
        settings = EvalSettings(
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            images_per_prompt=args.images_per_prompt,
            cfg_weight=args.cfg,
            temperature=args.temperature,
            seed=args.seed,
        )
        questions, question_issues = ((), [])
        if args.understanding:
            questions, question_issues = read_questions(
                args.understanding,
                image_root=args.image_root,
                on_error=args.on_error,
                limit=args.max_questions,
            )
        prompts, prompt_issues = ((), [])
        if args.generation:
            prompts, prompt_issues = read_prompts(
                args.generation, on_error=args.on_error, limit=args.max_prompts
            )
        for issue in [*question_issues, *prompt_issues]:
            print(f"skipped: {issue}", file=sys.stderr)
        policy = _load_policy(args)
        letters = OptionLetterTable.from_tokenizer(
            policy.encoder.tokenizer,
            letters=policy.letters,
            answer_tag=policy.answer_tag,
            vocab_size=policy.model.config.text.vocab_size,
        )
        hps_model, hps_tokenize, reward_name = (
            _load_reward(args, policy) if prompts else (None,) * 3
        )
        graphdef, state = nnx.split(policy.model)
        hps_graphdef, hps_params = nnx.split(hps_model) if hps_model is not None else (None, None)
        evaluator = Evaluator(
            graphdef,
            policy.model.config,
            policy.encoder,
            letters,
            settings,
            questions=questions,
            prompts=prompts,
            hps_graphdef=hps_graphdef,
            hps_tokenize=hps_tokenize,
            skipped_questions=skipped_entries(question_issues),
            skipped_prompts=skipped_entries(prompt_issues),
        )
        sink = report_lib.ImageWriter(out) if prompts else None
        result = evaluator.run((state,), hps_params, sink)
    except (OSError, ValueError) as e:
        print(f"error: {e}")
        return 2
    report = {
        "understanding": result.understanding,
        "generation": result.generation,
        "model": policy.name,
        "step": policy.step,
        "settings": {
            **dataclasses.asdict(settings),
            "understanding_file": args.understanding,
            "generation_file": args.generation,
            "reward": reward_name,
            "dtype": policy.dtype,
            "option_letters": letters.letters,
            "answer_tag": list(policy.answer_tag) if policy.answer_tag else None,
        },
    }
    report_lib.write_outputs(out, report, result.answers, result.images)
    if sink is not None:
        sink.save_grid(settings.images_per_prompt)
    print(report_lib.format_table(report))
    for speed, unit in ((result.answer_speed, "question"), (result.image_speed, "image")):
        if speed is not None:
            print(f"{unit}s: {speed.line(unit)}")
    print(f"wrote {out / report_lib.REPORT_FILE}")
    return 0


def _check_arguments(args: argparse.Namespace, out: Path) -> None:
    from pairuni_jax.evaluation import report as report_lib

    outputs = (
        report_lib.REPORT_FILE,
        report_lib.PREDICTIONS_FILE,
        report_lib.GENERATIONS_FILE,
        report_lib.IMAGES_DIR,
        report_lib.GRID_FILE,
    )
    if (args.model is None) == (args.run is None):
        raise ValueError("pass exactly one of --model DIR and --run RUN_DIR")
    if args.step is not None and args.run is None:
        raise ValueError("--step needs --run")
    if args.run is not None and args.dtype is not None:
        raise ValueError("--dtype applies to --model; a run evaluates in its model.dtype")
    if not (args.understanding or args.generation):
        raise ValueError("nothing to evaluate: pass --understanding FILE and/or --generation FILE")
    if args.reward and not args.generation:
        raise ValueError("--reward scores generated images: pass --generation PROMPTS too")
    for name in ("max_questions", "max_prompts"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if not args.overwrite and (found := [n for n in outputs if (out / n).exists()]):
        raise ValueError(
            f"{out} already holds an evaluation ({', '.join(found)}); pass --overwrite"
        )


def _load_policy(args: argparse.Namespace) -> Policy:
    import numpy as np

    from pairuni_jax.data.prompts import PromptEncoder, load_tokenizer
    from pairuni_jax.rewards.accuracy import DEFAULT_LETTERS

    if args.model is not None:
        loaded = model_loading.load(args)
        dtype = np.dtype(loaded.model.dtype).name
        tag = tuple(args.answer_tag) if args.answer_tag else None
        letters = args.option_letters or DEFAULT_LETTERS
        return Policy(loaded.model, loaded.encoder, str(args.model), None, dtype, letters, tag)
    from pairuni_jax.export import load_run_policy

    policy = load_run_policy(args.run, args.step)
    config = policy.config
    tokenizer = load_tokenizer(policy.tokenizer_dir)
    model = policy.model
    encoder = PromptEncoder(tokenizer, model.config.num_image_tokens, config.data.system_prompt)
    run_tag = tuple(config.reward.answer_tag) if config.reward.answer_tag else None
    tag = tuple(args.answer_tag) if args.answer_tag else run_tag
    letters = args.option_letters or config.reward.option_letters
    name = str(Path(args.run).absolute())
    dtype = np.dtype(model.dtype).name
    return Policy(model, encoder, name, policy.step, dtype, letters, tag, config)


def _load_reward(args: argparse.Namespace, policy: Policy) -> tuple[Any, Any, str | None]:
    """(HPS model, its prompt tokenizer, a name), or Nones when images are not scored."""
    import jax

    from pairuni_jax.data.pipeline import resolve_hps_tokenizer
    from pairuni_jax.rewards.hps import load_reward_model

    if args.reward is not None:
        return load_reward_model(args.reward), resolve_hps_tokenizer(args.reward), args.reward
    if policy.run_config is None:
        return None, None, None
    from pairuni_jax.sharding import MeshConfig, make_mesh
    from pairuni_jax.train import load_hps

    section = policy.run_config.reward
    mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    model, tokenizer_dir = load_hps(section, mesh)
    name = section.path or f"the run's random tiny HPS (seed {section.init_seed})"
    return model, resolve_hps_tokenizer(tokenizer_dir), name
