"""What a run leaves behind: atomic files and the provenance of every result."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import secrets
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("kon-ray", "torch", "transformers", "peft", "tokenizers", "ray", "deepspeed", "optuna", "numpy", "pandas")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A new file beside ``path`` to write in the block, then moved onto ``path``: readers see the
    old file or the new one, never half. It is created as ``open`` creates files, 0666 less the umask
    (``tempfile.mkstemp`` would make it 0600, unreadable by colleagues on shared storage)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (``atomic_file``), synced to disk."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def now() -> str:
    """The time in UTC to the second (ISO 8601), as results record it."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode())


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the kon-ray checkout, if it is one."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}


def provenance() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"git": git_state(), "versions": versions, "python": platform.python_version(), "host": platform.node()}
