"""What makes a run the same run, and the checks that refuse to resume a checkpoint of another.

A checkpoint's ``state.json`` (``kon_ray.checkpoint``) records the run's config, its identity
(data, tokenizer, backbone) and its provenance; ``check_same_run`` compares them with this run's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kon_ray.config import ConfigError, flatten
from kon_ray.results import provenance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunIdentity:
    """What makes a run the same run beyond its config: the data, the tokenizer and the backbone,
    each as a hash of its contents (a name alone would not see a file changed in place)."""

    data_hash: str
    tokenizer: dict[str, str]
    """name and hash (``kon_ray.backbone.tokenizer_identity``)"""
    backbone: dict[str, str]
    """name and hash (``kon_ray.backbone.backbone_identity``)"""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunIdentity:
        return cls(values["data_hash"], dict(values["tokenizer"]), dict(values["backbone"]))

    def differences(self, saved: RunIdentity) -> list[str]:
        """What differs from ``saved``, as 'what saved -> this' phrases."""
        out = []
        if saved.data_hash != self.data_hash:
            out.append(f"data hash {saved.data_hash} -> {self.data_hash}")
        for what in ("tokenizer", "backbone"):
            old, new = getattr(saved, what), getattr(self, what)
            if old["hash"] != new["hash"]:
                before = f"{old['name']} (hash {old['hash'][:16]})"
                out.append(f"{what} {before} -> {new['name']} (hash {new['hash'][:16]})")
        return out


# Settings that may change between a run and its resumption: budgets and threads.
RESUMABLE_CHANGES = {"train.max_minutes", "train.max_steps", "train.epochs", "train.threads", "train.cpus_per_worker"}
# Settings that re-ranking a saved run may change: how it is ranked, and on how many triples.
RERANK_KEYS = ("eval.", "data.valid_limit", "data.test_limit", "data.valid_unseen")


def rerank_settings() -> str:
    """``RERANK_KEYS`` as a person reads them: 'eval.*, data.valid_limit, ...'."""
    return ", ".join(k + "*" if k.endswith(".") else k for k in RERANK_KEYS)


def check_same_run(folder: Path, config: dict[str, Any], identity: RunIdentity | None = None) -> None:
    """Refuse to resume a checkpoint written under other settings, on other data, or with another
    tokenizer or backbone; warn when the code or library versions differ.

    Without ``identity``, the settings only: a check to make before loading the backbone.
    """
    saved = json.loads((folder / "state.json").read_text())
    before = _flat(saved["config"])
    now = _flat(config)
    changed = sorted(k for k, v in now.items() if before.get(k) != v and k not in RESUMABLE_CHANGES)
    if changed:
        details = ", ".join(f"{k}: {before.get(k)!r} -> {now[k]!r}" for k in changed[:5])
        raise ConfigError(f"{folder} was written by a run with other settings ({details}); use another output folder")
    if identity is None:
        return
    if "identity" not in saved:
        raise ConfigError(
            f"{folder / 'state.json'}: no run identity (an older kon-ray wrote it); use another output folder"
        )
    differences = identity.differences(RunIdentity.from_dict(saved["identity"]))
    if differences:
        raise ConfigError(
            f"{folder} was written by another run ({'; '.join(differences)}); use another output folder"
        )
    for line in provenance_changes(saved.get("provenance", {}), provenance()):
        log.warning("resuming %s: %s", folder, line)


def provenance_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """How the code's commit and library versions differ between two ``results.provenance`` records."""
    out = []
    before, after = saved.get("git", {}).get("commit"), now["git"]["commit"]
    if before != after:
        out.append(f"written at commit {before}, now at {after}")
    versions = saved.get("versions", {})
    for name, version in now["versions"].items():
        if versions.get(name) != version:
            out.append(f"{name} {versions.get(name)} when written, now {version}")
    return out


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys, values as JSON gives them back (tuples become lists)."""
    return dict(flatten(json.loads(json.dumps(config))))
