"""Ctrl-C and SIGTERM to a Snakemake run reach its jobs, and the run ends with its summary.

Snakemake 9's local executor passes no signal on to its jobs: on SIGINT it raises
``KeyboardInterrupt`` in its scheduler and then waits, without limit, for every running job to end on
its own (``ThreadPoolExecutor.shutdown(wait=True)``). A SIGINT to the ``snakemake`` process alone
(``kill``, a launcher, a scheduler) therefore leaves the training jobs running, and a second SIGINT
during that wait makes Snakemake close the job threads' still-running event loops: the "This event
loop is already running" traceback, without the end summary (``onerror`` never runs).

``relay_signals`` (called from the workflow's ``onstart``) replaces that path. Its handler only writes
the signal's number to a pipe (safe in a signal handler: no lock, no allocation); a daemon thread reads
it, sends the same signal to every job process of this run (``python -m puppet ...``: each stops after
its optimizer step with a checkpoint, ``puppet.core.stopping``), prints one line and asks the scheduler
to start no new job (its own graceful exit). Snakemake then waits for the jobs, which now end within a
step, and calls ``onerror``: the end summary names each stopped run. A second signal is relayed too
(the jobs stop at once); a third gives Snakemake's own handling back, as do ``onsuccess`` and
``onerror`` (``release_signals``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)
DEFAULT_AFTER = 3  # the signal count from which the default handlers are back (an escape hatch)
RESCAN_S = 3.0  # after a signal, jobs that appear within this long (being launched) get it too


def _is_job(cmdline: list[str]) -> bool:
    """A harness job: ``python -m puppet ...``, or the shell that is about to ``exec`` one."""
    if "-m" in cmdline and cmdline[cmdline.index("-m") + 1 : cmdline.index("-m") + 2] == ["puppet"]:
        return True
    return len(cmdline) >= 3 and cmdline[1] == "-c" and "python -m puppet " in cmdline[2]


def job_processes() -> list:
    """This process's descendants that are harness jobs (``python -m puppet ...``)."""
    import psutil  # a dependency of Snakemake; imported here so the harness's jobs never pay for it

    jobs = []
    for child in psutil.Process().children(recursive=True):
        try:
            if _is_job(child.cmdline()):
                jobs.append(child)
        except psutil.Error:  # ended meanwhile, or not ours to read
            continue
    return jobs


class SignalRelay:
    """Installs the handlers and the relaying thread; ``stop_scheduling()`` is called on the first signal.

    The handler runs in the main thread and only counts and writes to a pipe; from the third signal on
    it gives the previous handlers back and calls the previous one. The thread does the rest, and no
    error of its own can leave the run without a working Ctrl-C (it then gives the handlers back)."""

    def __init__(self, stop_scheduling: Callable[[], None], say: Callable[[str], None] | None = None) -> None:
        self.stop_scheduling = stop_scheduling
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.count = 0
        self.relayed = 0
        self._previous: dict[int, object] = {}
        self._read, self._write = os.pipe()
        self._thread: threading.Thread | None = None

    def install(self) -> SignalRelay:
        for sig in SIGNALS:
            if signal.getsignal(sig) is signal.SIG_IGN:  # ignored by whoever started us: keep it so
                continue
            self._previous[sig] = signal.signal(sig, self._handler)
        self._thread = threading.Thread(target=self._relay, name="puppet-signal-relay", daemon=True)
        self._thread.start()
        return self

    def uninstall(self) -> None:
        """Give the previous handlers back (main thread: the workflow's onsuccess / onerror)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handler(self, signum: int, frame) -> None:
        self.count += 1
        if self.count >= DEFAULT_AFTER or self._thread is None or not self._thread.is_alive():
            previous = self._previous.get(signum, signal.default_int_handler)
            self.uninstall()
            print(f"{signal.Signals(signum).name} again: Snakemake's own handling is back", file=sys.stderr)
            if callable(previous):
                previous(signum, frame)
            elif signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        os.write(self._write, bytes([signum]))

    def _relay(self) -> None:
        while True:
            data = os.read(self._read, 1)
            if not data:
                return
            try:
                self.relay(data[0])
            except Exception as exc:  # never leave the run deaf to Ctrl-C: the main thread's handler takes over
                self.say(f"warning: could not pass the signal on to the jobs ({type(exc).__name__}: {exc})")
                return

    def relay(self, signum: int) -> None:
        """What one signal does: the scheduler starts no new job, then every job of the run, and each that
        appears within ``RESCAN_S`` (being launched as the signal came), gets the signal once."""
        import psutil

        self.relayed += 1
        name = signal.Signals(signum).name
        if self.relayed == 1:
            self.stop_scheduling()
        signalled: set[int] = set()

        def signal_new_jobs() -> None:
            for process in job_processes():
                if process.pid in signalled:
                    continue
                try:
                    process.send_signal(signum)
                    signalled.add(process.pid)
                except psutil.Error:  # ended meanwhile: nothing to stop
                    continue

        signal_new_jobs()
        jobs = f"{len(signalled)} running job{'s' if len(signalled) != 1 else ''}"
        if self.relayed == 1:
            self.say(
                f"{name}: passed to {jobs}, each stops after its optimizer step with a checkpoint; no new job "
                "starts. A second signal stops them at once."
            )
            deadline = time.monotonic() + RESCAN_S  # jobs launched as the signal came get it too
            while time.monotonic() < deadline:
                time.sleep(0.2)
                signal_new_jobs()
        else:
            self.say(f"{name} again: passed to {jobs} to stop at once; a third gives Snakemake's own handling back")


_ACTIVE: list[SignalRelay] = []


def relay_signals(workflow) -> SignalRelay | None:
    """Called from the Snakefile's ``onstart``: relay SIGINT and SIGTERM to this run's jobs. Local execution
    only (a cluster executor cancels its jobs itself on Ctrl-C). Never fails the workflow: where it cannot
    be installed (not the main thread, no scheduler), Snakemake's own handling stays."""
    scheduler = getattr(workflow, "scheduler", None)
    local = getattr(workflow, "local_exec", False) and not getattr(workflow, "remote_exec", False)
    if scheduler is None or not local or threading.current_thread() is not threading.main_thread():
        return None
    try:
        relay = SignalRelay(lambda: scheduler.exit_gracefully()).install()
    except (OSError, ValueError) as exc:
        print(f"warning: Ctrl-C will not reach running jobs ({exc})", file=sys.stderr)
        return None
    _ACTIVE.append(relay)
    return relay


def release_signals() -> None:
    """The workflow's ``onsuccess`` / ``onerror``: the scheduling is over, Snakemake's own handling is back."""
    while _ACTIVE:
        _ACTIVE.pop().uninstall()
