"""SIGTERM and SIGINT as requests to stop between steps, so a run always stops at a checkpoint.

The handlers only record the signal: the trainer finishes the step in progress (a compilation
included: interrupting XLA mid-compile is what crashed runs), saves a checkpoint and exits with
``ExitCode.PREEMPTED`` (SIGTERM) or ``ExitCode.INTERRUPTED`` (SIGINT). A second SIGINT exits at
once without saving (the last finished checkpoint stays intact).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from pairuni_jax.errors import ExitCode

HANDLED = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """``with StopSignals() as stop:`` installs the handlers (main thread only) for the block;
    ``stop.received`` is the first signal that arrived, or None."""

    def __init__(self):
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in HANDLED}
        return self

    def __exit__(self, *exc_info) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        received = signal.Signals(signum)
        if received is signal.SIGINT and self.received is signal.SIGINT:
            print("\nsecond interrupt: exiting now, without saving", file=sys.stderr, flush=True)
            os._exit(ExitCode.INTERRUPTED)
        if self.received is None:
            self.received = received
            print(
                f"\n{received.name}: stopping after this step and saving a checkpoint"
                + (" (interrupt again to exit at once)" if received is signal.SIGINT else ""),
                file=sys.stderr,
                flush=True,
            )


def exit_code(stopped_by: signal.Signals | None) -> ExitCode:
    """The exit code of a run that ``stopped_by`` stopped (``OK`` for a run that finished)."""
    if stopped_by is signal.SIGTERM:
        return ExitCode.PREEMPTED
    if stopped_by is signal.SIGINT:
        return ExitCode.INTERRUPTED
    return ExitCode.OK
