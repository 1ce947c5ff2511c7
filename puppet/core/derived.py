"""Derived results that can be verified: every table a report rule writes carries a content check.

The run records (``train.json``, ``measure.json``) are the source of truth; ``results/metrics.csv``,
``models.csv``, ``mor.csv`` and the paper's tables are derived from them. A derived file that lost a
row or its header reads as a smaller, valid table, and Snakemake, which looks at dates only, calls
it up to date forever. So each writer leaves a check beside what it wrote
(``write_checks``: ``.NAME.check.json``, hidden, with the file's SHA-256, its size, its row count
and what it was made from), and each invocation compares them before any job (``problem``):

* an intact file, or one not written yet, is left alone;
* a file that differs from its check, or has none (edited by hand, cut by a full disk, written by
  a version without checks), is reported at start; its rule is rerun (its ``params`` count the
  damage, so a dry run shows the rebuild), and ``onstart`` keeps the damaged file beside it as
  ``NAME.corrupt-<mtime_ns>`` (``puppet.core.runs.set_aside``) before the rule rebuilds it from the
  run records.

Hashing costs milliseconds: the derived files are small tables.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from puppet.core.io import atomic_write_json
from puppet.core.runs import CORRUPT_TAG

CHECK_VERSION = 1


def check_path(path: str | Path) -> Path:
    """Where the check of ``path`` lives: ``.NAME.check.json`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.check.json")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def count_rows(path: Path) -> int | None:
    """Data rows of a CSV (its header excluded; quoted line breaks read as the csv module does), or
    None for other files and unreadable ones."""
    if path.suffix != ".csv":
        return None
    try:
        with open(path, newline="") as f:
            return max(sum(1 for _ in csv.reader(f)) - 1, 0)
    except (OSError, csv.Error, UnicodeDecodeError):
        return None


def write_checks(paths, *, made_by: str, sources=()) -> None:
    """Leave a check beside each file of ``paths`` (just written by ``made_by``, a command line);
    ``sources``: the run records it was made from, listed in the check for the reader."""
    sources = sorted(str(s) for s in sources)
    for path in map(Path, paths):
        check = {
            "version": CHECK_VERSION,
            "sha256": _digest(path),
            "bytes": path.stat().st_size,
            "rows": count_rows(path),
            "made_by": made_by,
            "sources": sources,
        }
        atomic_write_json(check, check_path(path))


def problem(path: str | Path) -> str:
    """Why ``path`` does not match its check ('' when it does, or when there is no file yet)."""
    path = Path(path)
    if not path.is_file():
        return ""
    try:
        check = json.loads(check_path(path).read_text())
        expected = check["sha256"]
    except FileNotFoundError:
        return "there is none: edited by hand, or written before checks were kept"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{check_path(path).name} is unreadable ({type(exc).__name__})"
    try:
        if _digest(path) == expected:
            return ""
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    rows, written = count_rows(path), check.get("rows")
    if rows is not None and written is not None and rows != written:
        return f"{rows} data rows where {written} were written"
    return f"{path.stat().st_size} bytes where {check.get('bytes')} were written, or other content"


def kept_copies(path: str | Path) -> int:
    """Damaged copies of ``path`` kept so far (``NAME.corrupt-*``): the rule's rebuild count."""
    path = Path(path)
    return sum(1 for _ in path.parent.glob(f"{path.name}{CORRUPT_TAG}*"))
