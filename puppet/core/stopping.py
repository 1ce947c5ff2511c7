"""A training job stopped by a signal keeps its work: SIGTERM and SIGINT become a request that the
training loop honours after its current optimizer step.

SLURM sends SIGTERM at a job's time limit and on preemption, then SIGKILL after the site's
``KillWait`` (30 s by default); Ctrl-C sends SIGINT to the terminal's process group. Either way the
train job (``puppet.core.train.train_main``) finishes the step in progress, saves a checkpoint of the
epoch so far (the step, the partial epoch's sums, the RNG state: ``puppet.core.checkpoint``), writes
``stopped.json`` beside it, logs ``stopped by SIGTERM at epoch N, step S; rerun resumes`` and exits
with ``128 + signal number`` (143 for SIGTERM, 130 for SIGINT), what a shell reports for a process
killed by that signal, so Snakemake counts the job as not done and the end summary says why
(``puppet.core.runs.RunState.describe``). The rerun resumes at that step and ends with the result
of an uninterrupted run (CPU). A second signal stops at once (the last checkpoint is kept), unless it
is the first repeat of the same signal within ``REPEAT_WINDOW_S``: one Ctrl-C reaches the job twice
(the terminal signals the whole process group, and the workflow passes the signal on as well,
``puppet.core.relay``), and that duplicate must not turn a graceful stop into an abrupt one; only one
is absorbed, so a quick double Ctrl-C still stops at once.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType

STOPPED = "stopped.json"  # beside checkpoint.pt: why the last attempt stopped (removed when one starts)
SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_WINDOW_S = 1.5  # the same signal again within this many seconds is one request, not two


class GracefulStop:
    """Context manager: while inside it, the first SIGTERM or SIGINT is recorded in ``signum`` (the
    loop polls ``requested``); a second one raises ``KeyboardInterrupt`` (SIGINT) or ``SystemExit``
    with the signal's status (SIGTERM). Outside the main thread (a test runner's worker) it does
    nothing: Python delivers signals to the main thread only."""

    def __init__(self, clock=time.monotonic) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._clock, self._first_at, self._absorbed = clock, 0.0, False

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second one: stop now, unless it is the first one delivered twice
            if signum == self.signum and not self._absorbed and self._clock() - self._first_at < REPEAT_WINDOW_S:
                self._absorbed = True  # one duplicate at most: a quick double Ctrl-C still stops at once
                return
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum, self._first_at = signum, self._clock()
        print(
            f"{self.name} received: stopping after this optimizer step and saving a checkpoint "
            f"(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)
