"""Every run setting with its type, default and help, read from the config's field metadata.

``kon-ray config [SECTION]`` prints them; ``kon-ray config --markdown`` writes ``docs/configuration.md``
(a test keeps the committed file equal to it). A field's ``metadata["paper"]`` is the paper's value
where the default differs from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kon_ray.config import RunConfig
from kon_ray.overrides import ConfigError

NO_PAPER = object()


@dataclass(frozen=True)
class Setting:
    key: str
    """Dotted, as an override names it, e.g. ``model.k``."""
    type: str
    default: Any
    help: str
    paper: Any = NO_PAPER
    """The paper's value where ours differs; NO_PAPER where it does not (or the paper is silent)."""


def settings(section: str | None = None) -> list[Setting]:
    """The settings under ``section`` (``model``, ``model.embedded`` or one key); all when None."""
    found = list(_walk(RunConfig(), ""))
    if section is None:
        return found
    chosen = [s for s in found if s.key == section or s.key.startswith(f"{section}.")]
    if not chosen:
        sections = sorted({s.key.rsplit(".", 1)[0] for s in found})
        raise ConfigError(f"config {section!r}: no such section or key; sections: {', '.join(sections)}")
    return chosen


def _walk(obj: Any, prefix: str) -> Iterator[Setting]:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, f"{prefix}{f.name}.")
        else:
            paper = f.metadata.get("paper", NO_PAPER)
            yield Setting(f"{prefix}{f.name}", str(f.type), value, f.metadata["help"], paper)


def as_override(value: Any) -> str:
    """A value as it is typed on the command line: ``none``, ``true``, ``q_proj,v_proj``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def settings_text(section: str | None = None) -> str:
    """What ``kon-ray config [SECTION]`` prints: ``key: type = default``, its help, the paper's value."""
    lines = []
    for s in settings(section):
        lines.append(f"{s.key}: {s.type} = {as_override(s.default)}")
        lines.append(f"    {s.help}")
        if s.paper is not NO_PAPER:
            lines.append(f"    paper: {as_override(s.paper)}")
    return "\n".join(lines)


def settings_markdown() -> str:
    """``docs/configuration.md``: one table per section."""
    parts = [
        "# Configuration",
        "",
        "Every setting of a run, as `key=value` overrides take it (`kon-ray train model.k=4`, a study's",
        "`base`, a benchmark's dotted keys). Generated from the field metadata in `kon_ray/config/` by",
        "`python -m kon_ray.cli config --markdown > docs/configuration.md`; `kon-ray config [SECTION]`",
        "prints the same. *Paper* is the paper's value where the default differs; why it differs, with",
        "the evidence behind it, is in [defaults.md](defaults.md).",
    ]
    section = None
    for s in settings():
        here = s.key.rsplit(".", 1)[0]
        if here != section:
            section = here
            parts += ["", f"## `{section}`", "", "| key | type | default | paper | meaning |"]
            parts.append("|---|---|---|---|---|")
        paper = "" if s.paper is NO_PAPER else f"`{as_override(s.paper)}`"
        cells = [f"`{s.key}`", f"`{s.type}`", f"`{as_override(s.default)}`", paper, s.help]
        parts.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(parts) + "\n"
