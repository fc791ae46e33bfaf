"""``pairuni data ...``: inspect and build pair data sets.

``pairuni data validate FILE.jsonl [--image-root DIR]`` checks every record (fields, types, answer
letters, similarity range, images) and prints a summary; the exit code is 1 when any record is bad.
``pairuni data pair ...`` builds pairs from understanding and generation records (``data_pair``).
"""

from __future__ import annotations

import argparse

from pairuni_jax.commands import data_pair


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="inspect and build pair data sets")
    commands = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    validate = commands.add_parser(
        "validate", help="check a pair JSONL file and print a summary (exit 1 on errors)"
    )
    validate.add_argument("file", help="the pair JSONL file")
    validate.add_argument(
        "--image-root",
        default=None,
        help="directory image paths are relative to (default: the file's)",
    )
    validate.add_argument(
        "--max-errors", type=int, default=20, help="errors to list in full (all are counted)"
    )
    validate.set_defaults(func=run_validate)
    data_pair.register(commands)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_validate(args: argparse.Namespace) -> int:
    from pairuni_jax.data import records

    try:
        _, report = records.scan_jsonl(args.file, image_root=args.image_root, on_error="skip")
    except OSError as e:
        print(f"error: cannot read {args.file}: {e}")
        return 2
    print(report.summary(max_issues=args.max_errors))
    return 0 if report.ok else 1
