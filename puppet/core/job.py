"""The frame a job of a run works in: a failure recorded rather than raised, and the tests' hook
that makes a job fail.

``run_job`` is what the train and measure jobs each did by hand around their work: run it, and
on failure print one loud line, append the failure to the run's ``failures.jsonl`` and write a
one-line ``status=error`` record, so one bad run never stops the tables; ``LogStream`` keeps a job
alive when its log cannot be written. Separate from
``puppet.core.train`` and ``puppet.core.measure`` so both jobs fail the same way, and so the one
fault-injection hook (``failpoint``) has one home.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from puppet.core.io import atomic_write_json, one_line
from puppet.core.runs import BUSY_EXIT_CODE, RunBusyError, record_failure, write_problem, writer_lock
from puppet.core.specs import RunSpec

FAILPOINT_ENV = "PUPPET_FAILPOINT"
# Exit status of a job whose record could not be written (sysexits EX_IOERR): Snakemake must see the
# job fail, and the failure is in a fallback ledger (puppet.core.runs.record_failure).
UNWRITTEN_EXIT_CODE = 74


def failpoint(spec: RunSpec, event: str, epoch: int | None = None, step: int | None = None) -> None:
    """Fault injection for the test suite (``tests/test_faults.py``), off unless ``$PUPPET_FAILPOINT``
    is set. The train job (``puppet.core.train.main``) fires the only three events:

    * ``start``, before it reads any data: ``raise[:RUN]`` fails the job there with a RuntimeError;
    * ``epoch``, right after an epoch's checkpoint is saved (``epoch``: that epoch's number, from 1):
      ``kill-after-epoch:N[:RUN]`` SIGKILLs the job after epoch N's;
    * ``step``, after each optimizer step (``step``: steps done in epoch ``epoch``):
      ``term-at-step:E:S[:RUN]`` sends the job SIGTERM after step S of epoch E (as SLURM does).

    RUN is a model name or ``model/seedS``; without it every job is hit."""
    point = os.environ.get(FAILPOINT_ENV, "")
    if not point:
        return
    kind, *args = point.split(":")
    positional = {"raise": 0, "kill-after-epoch": 1, "term-at-step": 2}.get(kind, 0)
    target = args[-1] if len(args) > positional else None
    if target not in (None, spec.model, f"{spec.model}/seed{spec.seed}"):
        return
    if kind == "raise" and event == "start":
        raise RuntimeError(f"injected failure ({FAILPOINT_ENV}={point})")
    if kind == "kill-after-epoch" and event == "epoch" and epoch == int(args[0]):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "term-at-step" and event == "step" and (epoch, step) == (int(args[0]), int(args[1])):
        import signal

        os.kill(os.getpid(), signal.SIGTERM)


def run_job(
    stage: str,
    fn: Callable[[], dict[str, Any]],
    *,
    spec: RunSpec,
    run_dir: Path,
    failed: str,
    log: Path | None = None,
    provenance: dict[str, Any] | None = None,
    oom_hint: str | None = None,
) -> dict[str, Any]:
    """Run ``fn``, one job of the run (``stage``: ``train`` or ``measure``), and write the record it
    returns to ``run_dir/<stage>.json`` atomically, with the run's identity (profile, dataset, model,
    seed) added; return the record. A record with status ``paused`` or ``stopped`` is returned
    unwritten: the job is to be run again.

    A failure is recorded, not raised: ``fn``'s exception becomes the record ``{"status": "error",
    "error": <one line>, **provenance}``, is appended to the run's ``failures.jsonl``
    (``record_failure``, with ``provenance``) and is printed loud, ``<failed>: <message>`` on stderr
    (the run's log) and ``<failed>: <label>: <message>`` on stdout (the console), which names ``log``
    where given. With ``oom_hint``, running out of memory reads ``out of memory: <oom_hint> (...)``.
    Ctrl-C is no failure: it propagates.

    The job holds the run folder's writer lock (``puppet.core.runs.writer_lock``) throughout: when
    another live process holds it, nothing is written and the record ``{"status": "busy", "exit_code":
    73}`` names that process's PID. When the record itself cannot be written (a full or read-only
    disk), it carries ``unwritten`` (why) and ``exit_code`` 74, and the failure is in a fallback ledger."""
    try:
        with writer_lock(run_dir, stage):  # raises RunBusyError on entry only (fn's errors are recorded)
            return _run_locked(
                stage, fn, spec=spec, run_dir=run_dir, failed=failed, log=log, provenance=provenance, oom_hint=oom_hint
            )
    except RunBusyError as exc:  # nothing is written: the folder is another process's
        print(f"{failed}: {exc}", file=sys.stderr)
        print(f"{failed}: {spec.label}: {exc}", flush=True)
        return {"status": "busy", "error": str(exc), "exit_code": BUSY_EXIT_CODE}


def _run_locked(stage, fn, *, spec, run_dir, failed, log, provenance, oom_hint) -> dict[str, Any]:
    try:
        record = fn()
    except Exception as exc:  # recorded, not swallowed: the row says what failed
        message = one_line(exc)
        if oom_hint and (isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()):
            message = f"out of memory: {oom_hint} ({message[:200]})"
        print(f"{failed}: {message}", file=sys.stderr)
        where = f" (log: {log})" if log is not None else ""
        print(f"{failed}: {spec.label}: {message}{where}", flush=True)  # stdout: the console
        record_failure(run_dir, stage, message, **(provenance or {}))
        record = {"status": "error", "error": message, **(provenance or {})}
    if record["status"] in ("paused", "stopped"):
        return record
    record.update(profile=spec.profile, dataset=spec.dataset, model=spec.model, seed=spec.seed)
    target = Path(run_dir) / f"{stage}.json"
    try:
        atomic_write_json(record, target)
    except OSError as exc:  # the run folder cannot take even the record: say so, and fail the job
        problem = write_problem(target, exc)
        message = f"cannot write {target}: {problem}"
        if record["status"] == "ok":  # the result is lost with the record: a failure like any other
            record_failure(run_dir, stage, message, **(provenance or {}))
        print(f"{failed}: {spec.label}: {message}", flush=True)
        record.update(unwritten=message, exit_code=UNWRITTEN_EXIT_CODE)
    return record


class LogStream:
    """stderr that survives its file: the rules send a job's stderr to the run's log, through tee, so
    on a full or read-only disk the first message would raise BrokenPipeError and kill the job before
    it could record why. A failed write is dropped with one warning on stdout (the console)."""

    def __init__(self, stream) -> None:
        self._stream, self.broken = stream, False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except OSError as exc:
                self._lost(exc)
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except OSError as exc:
                self._lost(exc)

    def _lost(self, exc: OSError) -> None:
        self.broken = True
        print(f"warning: the job's log cannot be written ({exc.strerror or exc}); only the console has its outcome")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
