"""Display names for entities and relations, from URIs or plain labels.

``<http://dbpedia.org/resource/Fahrenheit_9/11>`` -> ``Fahrenheit 9/11``;
``<http://www.w3.org/2000/01/rdf-schema#seeAlso>`` -> ``see also``;
``place_of_birth`` -> ``place of birth``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_RESOURCE = "/resource/"


def _uri(raw: str) -> str | None:
    """The URI in ``raw`` (angle brackets dropped), or None for a plain label."""
    text = raw.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return text if "://" in text else None


def _words(text: str) -> str:
    return " ".join(text.replace("_", " ").split())


def entity_name(raw: str) -> str:
    """A URI's last path segment, percent-decoded, underscores to spaces; a label's underscores only.

    A DBpedia resource keeps everything after ``/resource/``: its names may hold a slash
    (``AC/DC``, ``Fahrenheit 9/11``), which the last segment alone would cut.
    """
    uri = _uri(raw)
    if uri is None:
        return _words(raw)
    if _RESOURCE in uri:
        tail = uri.split(_RESOURCE, 1)[1]
    else:
        tail = uri.rstrip("/").rsplit("/", 1)[-1]
    return _words(unquote(tail))


def relation_name(raw: str) -> str:
    """A URI's fragment or last path segment (a label as is), in lower-case words.

    Underscores become spaces and camelCase is split: ``birthPlace`` -> ``birth place``.
    """
    uri = _uri(raw)
    if uri is None:
        tail = raw
    elif "#" in uri:
        tail = unquote(uri.rsplit("#", 1)[1])
    else:
        tail = unquote(uri.rstrip("/").rsplit("/", 1)[-1])
    return _words(_CAMEL.sub(" ", tail)).lower()
