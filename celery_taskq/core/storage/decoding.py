"""Decoding what a database hands back, whatever a writer stored there.

Intake refuses what it cannot store cleanly, but rows may come from an older version, another
writer or a hand-written ``UPDATE``: JSON text that does not parse, a document nested deeper
than Python's recursion limit, a number too long to convert, SQLite text that is not UTF-8.
The engine decodes with these functions (:class:`celery_taskq.core.storage.database.Database`
installs them), so reading such a row never raises:

- :func:`read_json` is the engines' JSON deserializer. A document nested past the recursion
  limit is decoded without recursion; one that cannot be decoded at all reads back as an
  :class:`UnreadableJson` marker (a ``str``) that says why.
- :func:`read_sqlite_text` decodes SQLite text, replacing bytes that are not UTF-8 with
  U+FFFD.

:func:`loads_json` is ``json.loads`` without the recursion limit, for every intake that parses
JSON text (command line, form, HTTP API): a deep document then meets the same depth limit as
any other (:func:`celery_taskq.core.intake.check_task_data`) instead of a ``RecursionError``.
"""

from __future__ import annotations

import json
import math
import re
from json.scanner import NUMBER_RE
from typing import Any

UNREADABLE_PREVIEW_CHARS = 200
"""Characters of undecodable stored text quoted in its :class:`UnreadableJson` marker."""


class UnreadableJson(str):
    """A stored JSON value that cannot be decoded, read back as a marker text.

    Being a ``str``, it shows wherever a value is shown; code that must not act on it (a runner
    about to hand it to a handler) can test ``isinstance(value, UnreadableJson)``.
    """

    __slots__ = ()


def loads_json(text: str | bytes | bytearray) -> Any:
    """``json.loads(text)``, also for documents nested deeper than the recursion limit.

    Raises ``ValueError`` (``json.JSONDecodeError``) for text that is not JSON, like
    ``json.loads``.
    """
    try:
        return json.loads(text)
    except RecursionError:
        if not isinstance(text, str):
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        return _decode_without_recursion(text)


def read_json(stored: object) -> Any:
    """A stored JSON value decoded; never raises (see the module's docstring).

    ``stored`` is what the driver returns: text or bytes, or, on SQLite, a number (a JSON
    column has numeric affinity there, so the text ``5`` is stored as the integer 5).
    """
    if isinstance(stored, bool | int | float) or stored is None:
        return stored
    if isinstance(stored, memoryview):
        stored = stored.tobytes()
    if not isinstance(stored, str | bytes | bytearray):
        return UnreadableJson(f"[unreadable JSON: a stored {type(stored).__name__}]")
    try:
        return loads_json(stored)
    except ValueError as exc:
        # int() refuses numbers of more than 4,300 digits: read those as text instead.
        if "digits" in str(exc):
            try:
                return json.loads(stored, parse_int=_int_or_text)
            except (ValueError, RecursionError):
                pass
        return _unreadable(stored, str(exc))


def read_sqlite_text(stored: bytes) -> str:
    """SQLite text as ``str``; bytes that are not UTF-8 become U+FFFD instead of an error."""
    return stored.decode("utf-8", "replace")


def _unreadable(stored: str | bytes | bytearray, reason: str) -> UnreadableJson:
    text = stored if isinstance(stored, str) else bytes(stored).decode("utf-8", "replace")
    preview = text[:UNREADABLE_PREVIEW_CHARS]
    more = f"… ({len(text):,} characters)" if len(text) > len(preview) else ""
    return UnreadableJson(f"[unreadable JSON: {reason}] {preview}{more}")


def _int_or_text(digits: str) -> int | str:
    try:
        return int(digits)
    except ValueError:
        return digits


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]+|\\.)*"')
_CONSTANTS: dict[str, Any] = {
    "null": None,
    "true": True,
    "false": False,
    "NaN": math.nan,
    "Infinity": math.inf,
    "-Infinity": -math.inf,
}


def _decode_without_recursion(text: str) -> Any:
    """Decode JSON with an explicit stack of open containers (same results as ``json.loads``)."""
    stack: list[list[Any] | dict[str, Any]] = []
    keys: list[str] = []  # the pending key of each open object, in stack order
    position = _skip(text, 0)
    while True:
        char = text[position : position + 1]
        value: Any
        if char in ("[", "{"):
            position = _skip(text, position + 1)
            if text[position : position + 1] == ("]" if char == "[" else "}"):
                value, position = ([] if char == "[" else {}), position + 1
            elif char == "[":
                stack.append([])
                continue
            else:
                stack.append({})
                key, position = _key(text, position)
                keys.append(key)
                continue
        elif char == '"':
            value, position = _string(text, position)
        else:
            value, position = _scalar(text, position)
        # Attach the value; close every container that ends right after it.
        while True:
            position = _skip(text, position)
            if not stack:
                if position != len(text):
                    raise json.JSONDecodeError("Extra data", text, position)
                return value
            top = stack[-1]
            if isinstance(top, list):
                top.append(value)
            else:
                top[keys[-1]] = value
            char = text[position : position + 1]
            if char == ",":
                position = _skip(text, position + 1)
                if isinstance(top, dict):
                    keys[-1], position = _key(text, position)
                break
            if char != ("]" if isinstance(top, list) else "}"):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, position)
            value = stack.pop()
            if isinstance(value, dict):
                keys.pop()
            position += 1


def _skip(text: str, position: int) -> int:
    """The position after the whitespace at ``position``."""
    match = _WHITESPACE.match(text, position)
    return position if match is None else match.end()


def _key(text: str, position: int) -> tuple[str, int]:
    """An object's key and the position of its value (after the colon and whitespace)."""
    if text[position : position + 1] != '"':
        raise json.JSONDecodeError(
            "Expecting property name enclosed in double quotes", text, position
        )
    key, position = _string(text, position)
    position = _skip(text, position)
    if text[position : position + 1] != ":":
        raise json.JSONDecodeError("Expecting ':' delimiter", text, position)
    return key, _skip(text, position + 1)


def _string(text: str, position: int) -> tuple[str, int]:
    """The string whose opening quote is at ``position``, and the position after it."""
    match = _STRING.match(text, position)
    if match is None:
        raise json.JSONDecodeError("Unterminated string or invalid character", text, position)
    value: str = json.loads(match.group())  # one string: json.loads does not recurse here
    return value, match.end()


def _scalar(text: str, position: int) -> tuple[Any, int]:
    """A number or a constant (``null``, ``true``, ``NaN`` …) at ``position``."""
    for word, constant in _CONSTANTS.items():
        if text.startswith(word, position):
            return constant, position + len(word)
    match = NUMBER_RE.match(text, position)
    if match is None:
        raise json.JSONDecodeError("Expecting value", text, position)
    integer, fraction, exponent = match.groups()
    if fraction or exponent:
        return float(integer + (fraction or "") + (exponent or "")), match.end()
    return int(integer), match.end()
