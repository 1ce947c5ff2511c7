"""Atomic file writes and provenance helpers.

Every file a rule produces appears atomically (write to a temporary name in the
same folder, then rename), so a crash never leaves a half-written CSV or
checkpoint that looks complete.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

_UMASK = os.umask(0o022)  # read once (the call sets it), then put back
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then rename the result onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make results private: files as open() makes them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(obj: Any, path: str | os.PathLike) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n", path)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_csv(df, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """``Type: message``, first line only (cut to ``limit`` characters): how errors reach a
    metrics row, a failure ledger or the console."""
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text[:limit] if limit else text


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# What determines results; local edits elsewhere (README, docs) do not make a run "dirty".
CODE_PATHS = ("puppet", "baselines", "workflow", "config", "pyproject.toml")


def git_commit() -> str:
    """The commit of the code that ran, with '+dirty' when code or config had local changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("+dirty" if dirty else "")
