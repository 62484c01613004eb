"""Reading the lines of a KG file, for either folder format, and the error every problem raises.

Cleaning: a UTF-8 BOM is dropped; CR or CRLF line ends are read as LF; blank lines are skipped; a
header line is skipped with a warning; a NUL byte is refused. Every problem raises KGFormatError
naming the file, the 1-based line and what was expected, quoting at most ``QUOTE`` characters of
the line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
QUOTE = 200
"""Characters of a bad line that an error message quotes at most."""

Labels = tuple[tuple[str, ...], tuple[str, ...]]
"""The names of entities or relations, in index order, and their ids in the source files."""
Loaded = tuple[Labels, Labels, list[np.ndarray]]
"""What a format reader returns: entity labels, relation labels, and the train, valid, test triples."""


class KGFormatError(ValueError):
    """A KG file is missing or malformed; the message names the file and line."""


def quote(line: str) -> str:
    """``repr(line)``, cut to about ``QUOTE`` characters."""
    return repr(line) if len(line) <= QUOTE else f"{line[:QUOTE]!r}... ({len(line)} characters)"


def read_lines(path: Path, sources: dict[str, bytes]) -> list[tuple[int, str]]:
    """(1-based line number, text) of every non-blank line; the file's bytes go to ``sources``."""
    return [(no, line) for no, line in enumerate(read_text(path, sources).split("\n"), 1) if line.strip()]


def read_text(path: Path, sources: dict[str, bytes]) -> str:
    """The file's text, its bytes put in ``sources``: the BOM dropped, CR and CRLF line ends read as
    LF, and a NUL byte refused."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise KGFormatError(
            f"{path}, line {line}: not UTF-8 (byte 0x{data[e.start]:02x}); save it as UTF-8"
        ) from None
    sources[path.name] = data
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    nul = text.find("\0")
    if nul >= 0:
        raise KGFormatError(f"{path}, line {text.count(chr(10), 0, nul) + 1}: NUL byte; a KG file holds text")
    return text


def skip_header(path: Path, lines: list[tuple[int, str]], header: bool) -> list[tuple[int, str]]:
    """``lines`` less the first when ``header`` says it is one, with a warning."""
    if lines and header:
        logger.warning("%s, line %d: header %s skipped", path, lines[0][0], quote(lines[0][1]))
        return lines[1:]
    return lines


def require(folder: Path, names: tuple[str, ...]) -> None:
    """Refuse a folder that lacks one of the files ``names`` of its format."""
    for name in names:
        if not (folder / name).is_file():
            raise KGFormatError(f"{folder / name}: missing file; this format needs {', '.join(names)}")
