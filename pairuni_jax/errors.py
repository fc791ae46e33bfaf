"""User errors and the exit codes of ``pairuni`` commands.

A *user error* is a problem with what the user asked for (a config field, a data file, a run
directory, a destination path) that the message alone explains. The commands print it as one
``error: ...`` line on stderr and exit with ``ExitCode.USER_ERROR``; with ``--debug`` or
``PAIRUNI_DEBUG=1`` the traceback is shown instead.
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Callable

DEBUG_ENV = "PAIRUNI_DEBUG"


class ExitCode(enum.IntEnum):
    """What a ``pairuni train`` exit status means (documented in README, "Exit codes")."""

    OK = 0  # finished: every step ran, the last checkpoint is saved
    FAILED = 1  # a failure that is not a user error (a bug, a device failure): traceback shown
    USER_ERROR = 2  # a bad config, data file, run directory or destination: one `error:` line
    NON_FINITE = 3  # stopped by `nan_policy: stop`: a non-finite loss, gradient norm or param
    PREEMPTED = 75  # SIGTERM: checkpoint saved, resume by running the same command (EX_TEMPFAIL)
    INTERRUPTED = 130  # SIGINT (Ctrl-C): checkpoint saved unless no step had run since the last


class UserError(ValueError):
    """A problem with the user's input; the message names the file, field or path at fault."""


def debug_requested(flag: bool = False) -> bool:
    """True when ``--debug`` was given or ``PAIRUNI_DEBUG`` is set to anything but 0/empty."""
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_reporting_user_errors(
    command: Callable[[], int], kinds: tuple[type[BaseException], ...], debug: bool = False
) -> int:
    """Runs ``command``; an exception of ``kinds`` becomes one ``error:`` line on stderr and
    ``ExitCode.USER_ERROR`` (with ``debug`` it propagates, traceback and all)."""
    try:
        return command()
    except kinds as e:
        if debug_requested(debug):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return ExitCode.USER_ERROR


def one_line(error: BaseException) -> str:
    """The message of ``error`` with its lines joined (``error: ...`` stays one line)."""
    text = str(error).strip() or type(error).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())
