"""Values a handler produced, made storable: text without NUL or lone surrogates, cut to size.

What a handler leaves behind — an exception's message, an error code, a result — can hold
what no database stores (NUL on PostgreSQL, a lone surrogate from ``os.fsdecode`` on any
driver) or be longer than its column. So every text is cleaned (NUL becomes U+FFFD, a lone
surrogate its ``\\udcXX`` escape) and cut to its column with a marker saying how much was
left out, and every string of a JSON document is cleaned the same way.
"""

from __future__ import annotations

import json
from typing import Any

ERROR_CODE_MAX_LENGTH = 255
"""Length of ``TaskRuns.ErrorCode``."""

ERROR_MESSAGE_MAX_LENGTH = 64 * 1024
"""Most characters of an error message kept."""

CUT_MARKER = " [celery_taskq: {omitted} more characters not kept]"
"""Appended to a text that was cut."""


def storable_text(value: str) -> str:
    """``value`` without NUL characters or lone surrogates (each shown escaped)."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def cut_text(value: str, max_length: int) -> str:
    """``value`` cleaned (:func:`storable_text`) and cut to ``max_length`` characters, marked."""
    value = storable_text(value)
    if len(value) <= max_length:
        return value
    marker = CUT_MARKER.format(omitted=len(value) - max_length)
    if len(marker) >= max_length:
        return value[:max_length]
    kept = max_length - len(marker)
    return value[:kept] + CUT_MARKER.format(omitted=len(value) - kept)


def storable_json(document: Any) -> Any:
    """A JSON document (as :func:`json.loads` makes them) with every string and key cleaned."""
    if isinstance(document, str):
        return storable_text(document)
    if isinstance(document, list):
        return [storable_json(item) for item in document]
    if isinstance(document, dict):
        return {storable_text(key): storable_json(item) for key, item in document.items()}
    return document


def json_size(document: Any) -> int:
    """Bytes of ``document`` serialised as compact JSON."""
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode("utf-8", "surrogatepass"))


def describe_exception(error: BaseException) -> str:
    """``str(error)``, or a description of it when its ``__str__`` fails."""
    try:
        return str(error)
    except BaseException as failure:  # any failure of a handler's __str__
        return f"<{type(error).__name__}: str() failed with {type(failure).__name__}>"
