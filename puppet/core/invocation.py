"""What the workflow says and does around its jobs: at parse time, when jobs start, at the end.

The Snakemake files only wire (``workflow/rules/common.smk`` calls these); everything an invocation
decides about the runs it plans lives here, as plain functions of the run folders
(``puppet.core.runs``) that the tests call without Snakemake:

* ``startup_warnings``: read only (dry runs and ``--unlock`` change nothing): the damaged files that
  will be kept aside, the runs that failed before and are retried, a missing Snakemake record
  (without which a failed run is not redone by itself), and runs that ``results/metrics.csv`` still
  lists but whose record was deleted (Snakemake would not remake them);
* ``failed_attempts``: the rule parameter that makes Snakemake's params trigger redo exactly the
  failed jobs;
* ``set_aside_damaged``: ``onstart``, inside Snakemake's lock: each damaged file kept aside;
* ``end_summary``: ``onsuccess`` / ``onerror``: one line per failed or unfinished run;
* ``derived_damage`` / ``set_aside_derived``: the derived tables (``results/metrics.csv`` and
  the tables made from it) that no longer match their content check (``puppet.core.derived``),
  reported before any job and kept aside in ``onstart``, while their rules rebuild them;
* ``planned_runtimes``: each job's runtime request from ``results/plan.csv`` (``python -m puppet plan``).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from puppet.core import derived
from puppet.core.runs import RunState, attempts, failure_lines, read_only, set_aside


def say(lines) -> None:
    """Print each line to stderr (where Snakemake's own messages go)."""
    for line in lines:
        print(line, file=sys.stderr)


def short(state: RunState) -> str:
    """profile/dataset/model/seedN of a run folder (its name less the config hash)."""
    return "/".join(state.path.parts[-5:-1])


def failed_attempts(state: RunState, stage: str) -> int:
    """Failed attempts of one stage of a run, damaged files not yet set aside included: it grows
    when the job fails or a file of it is damaged, so Snakemake's params trigger redoes exactly
    those jobs next time (a dry run shows them)."""
    return attempts(state.path, stage) + state.pending(stage)


def tabulated_runs(metrics_csv: str | Path) -> dict[str, set[str]]:
    """profile/dataset/model/seedN -> config hashes with a row in ``metrics_csv`` (csv, not pandas:
    this runs on every invocation)."""
    found: dict[str, set[str]] = {}
    if Path(metrics_csv).is_file():
        with open(metrics_csv, newline="") as f:
            for row in csv.DictReader(f):
                key = f"{row.get('profile')}/{row.get('dataset')}/{row.get('model')}/seed{row.get('seed')}"
                found.setdefault(key, set()).add(row.get("config_hash", ""))
    return found


def startup_warnings(states: list[RunState], metrics_csv: str | Path, has_metadata: bool) -> list[str]:
    """The lines an invocation prints before any job, about runs it will redo or cannot see."""
    lines = [
        f"warning: {path} is damaged ({why}); it will be kept aside and its job rerun"
        for state in states
        for path, why in state.damaged
    ]
    lines += [
        f"warning: {short(s)} is {s.describe()}; its job will be refused until that process ends"
        for s in states
        if s.writer is not None and s.train != "ok"
    ]
    retry = [s for s in states if s.failed]
    if retry:
        lines.append(f"{len(retry)} run(s) failed or were damaged before and are retried:")
        lines += [f"  {line}" for line in failure_lines(retry)]
        if not has_metadata:
            paths = " ".join(f"{s.path}/train.json" for s in retry)
            lines.append(
                "warning: Snakemake has no record of earlier runs here (.snakemake/metadata), so it cannot see that "
                f"these failed (and may end with 'Nothing to be done', exit 0); redo them with --forcerun {paths}"
            )
    tabulated = tabulated_runs(metrics_csv)
    gone = [s for s in states if s.path.name in tabulated.get(short(s), ()) and "missing" in (s.train, s.measure)]
    if gone:
        paths = " ".join(f"{s.path}/{'train' if s.train == 'missing' else 'measure'}.json" for s in gone)
        lines.append(
            f"warning: {len(gone)} run(s) in {metrics_csv} lost their train.json or measure.json; Snakemake "
            f"does not remake files of an up-to-date table: redo them with --forcerun {paths}"
        )
    return lines


def set_aside_damaged(states: list[RunState]) -> list[str]:
    """Keep each damaged file aside (``onstart``: inside Snakemake's lock, never in a dry run); the
    lines saying so. From then on the kept file carries the count (``failed_attempts`` of jobs whose
    params are evaluated later, downstream ones, must not count it twice)."""
    lines = []
    for state in states:
        for path, why in state.damaged:
            kept = set_aside(path, why, keep_original=path.name != "model.pt")
            lines.append(f"kept {path} as {kept.name}")
        state.damaged = []
    return lines


def derived_damage(paths) -> dict[str, str]:
    """Derived file -> why it does not match its content check, for each damaged one of ``paths``."""
    return {str(p): why for p in map(str, paths) if (why := derived.problem(p))}


def derived_rebuilds(damage: dict[str, str], outputs) -> int:
    """The ``params`` value of a rule that writes derived files: the damaged copies of its files kept
    so far plus those still to be kept. It grows with each damage, so Snakemake's params trigger
    rebuilds the rule (a dry run shows it), and stays put once the rule has rebuilt them."""
    return sum(derived.kept_copies(p) + (str(p) in damage) for p in outputs)


def derived_warnings(damage: dict[str, str], has_metadata: bool) -> list[str]:
    lines = [
        f"warning: {path} does not match its content check ({why}); it will be kept aside and rebuilt "
        "from the run records"
        for path, why in damage.items()
    ]
    if damage and not has_metadata:
        lines.append(
            "warning: Snakemake has no record of earlier runs here (.snakemake/metadata), so it may not see the "
            f"damage; rebuild with --forcerun {' '.join(damage)}"
        )
    return lines


def set_aside_derived(damage: dict[str, str]) -> list[str]:
    """Keep each damaged derived file beside it as ``NAME.corrupt-<mtime_ns>`` (``onstart``: inside
    Snakemake's lock, never in a dry run); the copy stays for the rule to replace. From then on the
    kept copy carries the count (``derived_rebuilds``)."""
    lines = [f"kept {path} as {set_aside(Path(path), why).name}" for path, why in damage.items()]
    damage.clear()
    return lines


def unwritable_runs(states: list[RunState], results: str | Path = "results") -> dict[str, str]:
    """Run folder -> why, for each run with work left whose folder is on a read-only file system.
    Snakemake cannot even prepare such a job (it deletes an output that is not there, and a
    read-only disk answers that with an error that aborts the whole invocation), so these runs are
    left out of the invocation: the others finish, and the end summary reports them as failed.
    A read-only ``results`` itself leaves nothing to do: ``ValueError``, one line."""
    if read_only(results):
        raise ValueError(
            f"{results}/ is on a read-only file system; remount it writable, or run from a folder that is "
            "(snakemake --directory DIR)"
        )
    return {
        str(s.path): "its folder is on a read-only file system; remount it writable, then rerun"
        for s in states
        if s.describe() != "done" and read_only(s.path)
    }


def end_summary(
    states: list[RunState],
    crashed_ok: bool,
    fallback: dict[str, dict] | None = None,
    left_out: dict[str, str] | None = None,
) -> tuple[list[str], bool]:
    """The end-of-invocation summary: (its lines, whether any run failed). ``crashed_ok``: the
    invocation succeeded, so a run without ``train.json`` is not a crashed one. ``fallback``: the
    failures this invocation recorded outside their run folder, which could not be written
    (``puppet.core.runs.fallback_failures``): such a run failed, whatever its folder shows;
    ``left_out``: the runs this invocation could not run at all (``unwritable_runs``), and why."""
    fallback = fallback or {}
    left_out = left_out or {}
    failed = failure_lines(states)
    lost = [s for s in states if not s.failed and str(s.path) in {**fallback, **left_out} and s.describe() != "done"]
    for s in lost:
        if str(s.path) in left_out:
            failed.append(f"FAILED {short(s)}: {left_out[str(s.path)]} (left out of this invocation)  [{s.path}]")
            continue
        entry = fallback[str(s.path)]
        failed.append(
            f"FAILED {short(s)}: {entry.get('error')} (recorded in {entry['ledger']}: the run folder could not "
            f"take it)  [{s.path}]"
        )
    states = [s for s in states if s not in lost]
    # a job that crashed (killed, out of memory on the host) or paused leaves no train.json
    unfinished = [] if crashed_ok else [s for s in states if s.train in ("missing", "paused", "stopped")]
    if not (failed or unfinished):
        return [], False
    what = f"{len(failed)} failed" + (f", {len(unfinished)} unfinished" if unfinished else "")
    lines = [f"\n{what} of {len(states) + len(lost)} run(s):", *(f"  {line}" for line in failed)]
    lines += [
        f"  UNFINISHED {short(s)}: {s.describe()}" + (f"; see {s.path / 'train.log'}" if s.started else "")
        for s in unfinished[:20]
    ]
    if len(unfinished) > 20:
        lines.append(f"  ... and {len(unfinished) - 20} more unfinished")
    marked = " (the tables mark the failed ones" + ("; the runs left out are not in them)." if lost else ").")
    lines.append(
        "Fix the cause and rerun the same command: only these runs are redone" + (marked if crashed_ok else ".")
    )
    return lines, bool(failed)


def planned_runtimes(path: str | Path, profile: str) -> dict[tuple[str, str, int, str, str], int]:
    """(dataset, model, seed, config_hash, job) -> runtime minutes from ``python -m puppet plan``'s CSV
    for ``profile``; empty where there is no plan (or an unreadable one: the default runtime applies).
    The run's hash is in the key, so a plan made for another version of the profile (other epochs,
    data, widths) gives no runtime to this one's jobs."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    out = {}
    for r in rows:
        try:
            if r.get("profile") == profile and r.get("model") and r.get("runtime_min"):
                key = (r["dataset"], r["model"], int(float(r["seed"])), r["config_hash"], r["job"])
                out[key] = int(float(r["runtime_min"]))
        except (KeyError, TypeError, ValueError):
            continue
    return out
