"""Preprocessing cache: one folder per key, keyed by a hash of the inputs and settings."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHE_ENV = "KON_RAY_CACHE"


def cache_root() -> Path:
    """``$KON_RAY_CACHE``, else ``~/.cache/kon-ray``."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "kon-ray"))


def cache_key(**parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (file digests, settings, versions)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def cached_dir(kind: str, key: str, build: Callable[[Path], None]) -> Path:
    """Return ``<cache>/<kind>/<key>``, building it with ``build(tmpdir)`` on a miss.

    The folder is built aside and renamed into place, so a crash never leaves a
    half-written entry and concurrent builders (Ray workers) agree on one result.
    """
    target = cache_root() / kind / key
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        build(tmp)
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
