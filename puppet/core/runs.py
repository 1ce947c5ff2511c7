"""Where a run lives, what state it is in, and what to do about a damaged one.

A run's folder is ``results/runs/<profile>/<dataset>/<model>/seed<N>/<config_hash>/``: the
hash of its spec (``puppet.core.specs.RunSpec.hash``: everything that determines its result) is part
of its identity, so a rerun with another spec (a typo in a data path, another learning rate)
trains in a folder of its own and can never replace a finished result; going back to the old
spec finds the old result again.

The workflow reads every planned run's state when it starts (``inspect_run``, read only):

* a run that failed (``status=error`` in ``train.json`` or ``measure.json``) is redone: each
  failure is appended to the run's ``failures.jsonl``, and the number of failed attempts is a
  parameter of the train and measure rules, so Snakemake's params trigger reruns exactly the
  runs that failed since they last ran;
* a damaged file (truncated or unreadable ``train.json`` / ``measure.json``; a ``model.pt``
  that is not a complete archive while the run still needs measuring) counts as one more
  attempt, so a dry run already shows the rerun; when the jobs start (``onstart``, inside
  Snakemake's lock, never in a dry run) the file is kept beside the original as
  ``NAME.corrupt-<mtime_ns>`` with a warning, and that kept copy carries the count from then on.
  A ``measure.json`` written before deployments were rows of their own (no ``deployments``
  list) is handled the same way: the run is measured again, its training kept;
* a run whose ``train.json`` or ``measure.json`` was deleted while ``results/metrics.csv`` still
  holds its row is not remade by Snakemake (it does not rebuild missing intermediate files of an
  up-to-date target): the workflow warns and names the ``--forcerun`` command;
* at the end, ``failure_lines`` gives the one-line-per-run summary the console shows, and the
  invocation exits non-zero when any run failed.

The params trigger needs Snakemake's record of the last execution (``.snakemake/metadata``);
without it a failed run is not redone by itself, and the workflow says so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from puppet.core.io import one_line
from puppet.core.stopping import STOPPED

FAILURES = "failures.jsonl"
# The run folder's writer lock (``writer_lock``): held by the train or measure job writing there.
LOCK = ".writer.lock"
# Exit status of a job refused because another process holds its run folder (sysexits EX_CANTCREAT).
BUSY_EXIT_CODE = 73
CORRUPT_TAG = ".corrupt-"
# train.json keys a finished (status=ok) record must have; anything less is a damaged file.
TRAIN_OK_KEYS = ("top1", "config_hash", "epochs")


def run_dir(results: str | Path, profile: str, dataset: str, model: str, seed: int, config_hash: str) -> Path:
    return Path(results) / "runs" / profile / dataset / model / f"seed{int(seed)}" / config_hash


@dataclass
class RunState:
    """What is on disk for one run."""

    path: Path
    train: str = "missing"  # missing | paused | stopped | ok | error | corrupt
    measure: str = "missing"  # missing | ok | error | skipped | corrupt
    error: str = ""  # the one-line message of a failed train or measure
    damaged: list[tuple[Path, str]] = field(default_factory=list)  # (file, what is wrong)
    stop: str = ""  # a stopped run: how (the train job's one-line message, from stopped.json)
    writer: int | None = None  # PID of a live process holding the run folder's writer lock
    started: bool = False  # a train job began here (its log exists), whether or not it got far

    @property
    def failed(self) -> bool:
        return self.train in ("error", "corrupt") or (self.train == "ok" and self.measure in ("error", "corrupt"))

    def pending(self, stage: str) -> int:
        """Damaged files of this stage not yet set aside: counted as attempts until they are."""
        owners = {"train.json": "train", "model.pt": "train", "measure.json": "measure"}
        return sum(owners[p.name] == stage for p, _ in self.damaged)

    def describe(self) -> str:
        if self.writer is not None and self.train != "ok":
            return f"being trained by PID {self.writer}, another process (wait for it, or stop it: kill {self.writer})"
        if self.train == "ok":
            return {"ok": "done", "missing": "trained, not measured"}.get(
                self.measure, f"trained, measure {self.measure}"
            )
        if self.train == "stopped":
            return f"{self.stop} (checkpoint kept)"
        if self.train == "missing" and self.started:
            return "started, stopped before its first checkpoint (a rerun starts it over)"
        return {"missing": "not started", "paused": "paused (checkpoint kept)", "error": "failed"}.get(
            self.train, self.train
        )


def read_record(path: Path) -> tuple[dict | None, str]:
    """A run's JSON record (train.json, measure.json), or None and why it is unusable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, one_line(exc)
    if not isinstance(data, dict) or data.get("status") not in ("ok", "error", "skipped"):
        return None, "not a run record (no status)"
    return data, ""


def archive_problem(path: Path) -> str:
    """Why ``path`` is not a complete ``torch.save`` archive ('' when it is one).

    torch.save writes a zip archive whose directory sits at the end of the file, so a
    truncated or half-copied file fails here; the check reads the directory only, never the
    tensors, so it costs milliseconds even for a paper-scale checkpoint."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        return f"not a complete archive ({one_line(exc)})"
    if not any(n.endswith("data.pkl") for n in names):
        return "not a torch.save archive (no data.pkl)"
    return ""


def inspect_run(path: str | Path) -> RunState:
    """The state of one run folder, with every damaged file it holds."""
    path = Path(path)
    state = RunState(path)
    train_json, measure_json, model_pt = path / "train.json", path / "measure.json", path / "model.pt"
    if train_json.exists():
        train, why = read_record(train_json)
        if train is None or (train["status"] == "ok" and any(k not in train for k in TRAIN_OK_KEYS)):
            state.train = "corrupt"
            state.damaged.append((train_json, why or f"record lacks {[k for k in TRAIN_OK_KEYS if k not in train]}"))
        elif train["status"] == "error":
            state.train, state.error = "error", str(train.get("error") or "unknown error")
        else:
            state.train = "ok"
    elif (path / "checkpoint.pt").exists() or (path / STOPPED).exists():
        state.train = "paused"
        try:  # stopped by a signal (puppet.core.stopping): the train job said where
            state.stop = str(json.loads((path / STOPPED).read_text())["message"])
            state.train = "stopped"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if measure_json.exists():
        measure, why = read_record(measure_json)
        if measure is not None and measure["status"] == "ok" and not isinstance(measure.get("deployments"), list):
            # written before deployments were rows of their own: measured again, the training kept
            measure, why = None, "written before measure.json had a 'deployments' list; the run is measured again"
        if measure is None:
            state.measure = "corrupt"
            state.damaged.append((measure_json, why))
        else:
            state.measure = measure["status"]
            if measure["status"] == "error" and state.train == "ok":
                state.error = f"measure: {measure.get('error') or 'unknown error'}"
    if state.train == "ok" and state.measure != "ok":
        # model.pt matters only while the run still has to be measured: a finished run whose
        # model.pt was deleted to save space is left alone (its numbers are all recorded)
        problem = archive_problem(model_pt) if model_pt.exists() else "missing"
        if problem:
            state.damaged.append((model_pt, problem))
    state.writer = lock_holder(path)
    state.started = (path / "train.log").exists()
    if state.train == "corrupt":
        state.error = f"damaged train.json ({state.damaged[0][1]})"
    elif state.train == "ok" and state.measure == "corrupt":
        state.error = "damaged measure.json"
    return state


class RunBusyError(RuntimeError):
    """Another live process holds the run folder's writer lock."""


def lock_holder(path: str | Path) -> int | None:
    """The PID holding ``path``'s writer lock, or None when no live process does (the kernel
    releases an ``flock`` when its process dies, even by SIGKILL, so a stale file means nothing)."""
    try:
        fd = os.open(Path(path) / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        try:
            return int(os.read(fd, 32).decode().split()[0])
        except (ValueError, IndexError, OSError):
            return -1  # held, by a writer that has not said who yet
    finally:
        os.close(fd)


@contextmanager
def writer_lock(path: str | Path, job: str):
    """Hold ``path``'s writer lock for the ``with`` block, or raise ``RunBusyError`` at once, naming
    the holder's PID: an orphaned job (its Snakemake killed) still trains there, and a second
    writer would interleave checkpoints with it. The lock file keeps the holder's PID and job."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only or full disk: the job fails at its first write and records why
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        holder = lock_holder(path)
        raise RunBusyError(
            f"{path} is being written by PID {holder}, another process (an earlier job left running?); "
            f"wait for it to end, or stop it (kill {holder}), then rerun"
        ) from None
    try:
        with contextlib.suppress(OSError):  # a full disk: the lock holds all the same, without its PID
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {job}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (harmless: an unheld lock means nothing)


def _unused(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... whichever does not exist yet."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def set_aside(path: Path, why: str, *, keep_original: bool = True) -> Path:
    """Keep a damaged file as ``NAME.corrupt-<mtime_ns>`` beside it, and return that path.

    Every call keeps one more file (``-2``, ``-3``... when the name is taken, e.g. a damaged
    file restored with its timestamp), and each kept file counts as one attempt
    (``attempts``): the workflow counted the damage as a pending attempt when it planned the
    jobs, so the count it recorded and the count after the set-aside agree.

    ``keep_original``: copy, leaving the damaged file for Snakemake to replace when the job
    reruns (a missing output of a finished grid would not be remade: Snakemake does not
    rebuild missing intermediate files of up-to-date targets). Otherwise move it (``model.pt``:
    large, and not a rule output). A missing file leaves an empty marker."""
    if not path.exists():
        record = path.with_name("train.json")
        stamp = record.stat().st_mtime_ns if record.exists() else 0
        kept = _unused(path.with_name(f"{path.name}{CORRUPT_TAG}missing-{stamp}"))
        kept.touch()
        return kept
    kept = _unused(path.with_name(f"{path.name}{CORRUPT_TAG}{path.stat().st_mtime_ns}"))
    if keep_original:
        shutil.copy2(path, kept)
    else:
        path.rename(kept)
    return kept


def record_failure(path: str | Path, stage: str, message: str, **extra) -> Path:
    """Append one failed attempt to the run's ``failures.jsonl`` (never rewritten); return the ledger
    written. When the run folder cannot be written (a full or read-only disk: the failure itself,
    often), the line goes to the first fallback ledger that can be (``fallback_ledgers``) with the
    run's path and why, and to stdout as ``PUPPET-FAILURE {json}``: the end summary reads it back."""
    path = Path(path)
    line = {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "stage": stage, "error": message, **extra}
    ledger = path / FAILURES
    try:
        path.mkdir(parents=True, exist_ok=True)
        torn = ledger.is_file() and ledger.stat().st_size > 0 and not ledger.read_bytes().endswith(b"\n")
        with open(ledger, "a") as f:  # a killed writer's torn last line must not swallow this one
            f.write(("\n" if torn else "") + json.dumps(line, sort_keys=True) + "\n")
        return ledger
    except OSError as exc:
        line.update(run=str(path), unwritable=f"cannot write {ledger}: {write_problem(path, exc)}")
    print("PUPPET-FAILURE " + json.dumps(line, sort_keys=True), flush=True)
    for fallback in fallback_ledgers():
        try:
            fallback.parent.mkdir(parents=True, exist_ok=True)
            with open(fallback, "a") as f:
                f.write(json.dumps(line, sort_keys=True) + "\n")
            return fallback
        except OSError:
            continue
    return Path("-")  # stdout only


# Where a failure goes when its run folder cannot be written: Snakemake's log folder of the workflow's
# working directory (shared with cluster nodes, like results/), then the machine's temporary folder.
FALLBACK_LEDGER = "puppet-failures.jsonl"


def fallback_ledgers() -> list[Path]:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return [
        Path(".snakemake") / "log" / FALLBACK_LEDGER,
        Path(tempfile.gettempdir()) / f"puppet-bench-{uid}-failures.jsonl",
    ]


def fallback_failures(since: float) -> dict[str, dict]:
    """Run folder -> its last failure recorded in a fallback ledger at or after ``since`` (epoch
    seconds: the invocation's start), for the end summary."""
    found: dict[str, dict] = {}
    for ledger in fallback_ledgers():
        try:
            lines = ledger.read_text().splitlines()
        except OSError:
            continue
        for text in lines:
            try:
                entry = json.loads(text)
                when = datetime.fromisoformat(entry["utc"]).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            if when >= int(since):  # the ledger's times are whole seconds
                found[str(Path(entry.get("run", "")))] = {**entry, "ledger": str(ledger)}
    return found


def attempts(path: str | Path, stage: str | None = None) -> int:
    """Failed attempts and set-aside files of a run (of one stage: 'train' or 'measure').

    The train and measure rules take this number as a parameter: it grows with each failure,
    so Snakemake's params trigger reruns a failed job at the next invocation, and it stays put
    once the job succeeds, so a finished run is never redone."""
    path = Path(path)
    n = 0
    if (path / FAILURES).is_file():
        for line in (path / FAILURES).read_text().splitlines():
            try:
                n += stage is None or json.loads(line).get("stage") == stage
            except ValueError:  # a torn line of a killed writer counts once, for training
                n += stage in (None, "train")
    owners = {"train.json": "train", "model.pt": "train", "measure.json": "measure"}  # not checkpoint.pt:
    for kept in path.glob(f"*{CORRUPT_TAG}*"):  # the train job sets that aside itself, mid-attempt
        owner = owners.get(kept.name.split(CORRUPT_TAG)[0])
        n += owner is not None and (stage is None or owner == stage)
    return n


def remove_orphan_temporaries(path: str | Path) -> list[Path]:
    """Delete ``.NAME.*.tmp`` files a killed writer left in a run folder (puppet.core.io writes to
    such names, then renames). Call it only while no other process writes there: the train
    job owns its folder."""
    removed = []
    for tmp in Path(path).glob(".*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def failure_lines(states: list[RunState]) -> list[str]:
    """One console line per failed run: where it is and the one-line error."""
    lines = []
    for s in states:
        if s.failed:
            parts = s.path.parts
            label = "/".join(parts[-5:-1]) if len(parts) >= 5 else str(s.path)
            lines.append(f"FAILED {label}: {s.error}  [{s.path}]")
    return lines


def read_only(path: str | Path) -> bool:
    """Whether ``path``, or the nearest folder above it that exists, is on a read-only file system."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def write_problem(path: Path, exc: BaseException | None = None) -> str:
    """Why ``path`` (a file, or the folder it goes in) cannot be written, with the advice that fits:
    a read-only file system, no permission, or a full disk. Read from the file system itself: torch
    reports a full disk as "[enforce fail at inline_container.cc]", with no error number."""
    folder = path if path.is_dir() else path.parent
    code = getattr(exc, "errno", None)
    try:
        stat = os.statvfs(folder)
        free = stat.f_bavail * stat.f_frsize
        read_only = bool(stat.f_flag & os.ST_RDONLY) or code == errno.EROFS
    except OSError:
        return "the folder cannot be read either; check the disk and its mount"
    if read_only:
        return (
            f"the file system of {folder} is read-only; remount it writable, or run from a folder that is "
            "(snakemake --directory DIR)"
        )
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to write in {folder}; fix its permissions or run from a folder you own"
    if code in (errno.ENOSPC, errno.EDQUOT) or free < 1e9:
        return f"disk full? {free / 1e9:.2f} GB free there; free space, or move results/ to a larger disk"
    return f"{free / 1e9:.2f} GB free there"
