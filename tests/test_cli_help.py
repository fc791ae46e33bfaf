"""``pairuni --help`` and every subcommand's ``--help`` start without JAX, Flax or the data
pipeline: the CLI imports only argparse-level modules until a command runs."""

import json
import subprocess
import sys

import pytest

from pairuni_jax import cli

HEAVY = ("jax", "flax", "optax", "orbax", "grain", "torch", "transformers", "tensorboardX")
CHILD = """
import json, sys
from pairuni_jax import cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy})))
"""


def _subcommands() -> list[list[str]]:
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 (argparse internals)
    out = [[]]
    for name, sub in commands.items():
        out.append([name])
        if sub._subparsers is not None:  # noqa: SLF001
            out += [[name, inner] for inner in sub._subparsers._group_actions[0].choices]  # noqa: SLF001
    return out


@pytest.mark.parametrize("command", [["--help"], ["generate", "--help"]])
def test_help_imports_no_jax(command):
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(heavy=set(HEAVY)), *command],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "usage: pairuni" in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_every_subcommand_help_imports_no_jax():
    """One child process walks every (sub)command's ``--help``."""
    script = (
        "import json, sys\nfrom pairuni_jax import cli\n"
        f"for argv in {_subcommands()!r}:\n"
        "    try:\n        cli.main([*argv, '--help'])\n    except SystemExit:\n        pass\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {set(HEAVY)!r})))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
