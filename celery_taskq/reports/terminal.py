"""Text safe to print on a terminal: stored values shown escaped, never as controls.

A stored field (a handler name, an error message, a run's output) is written by handlers and
users. Printed raw, an escape sequence in it could clear the operator's screen, move the
cursor to overwrite earlier lines, retitle the window, or reorder text with bidirectional
overrides. :func:`escape_controls` shows every such character as a Python-style escape
(``\\x1b``, ``\\r``, ``\\u202e``) instead: C0 and C1 controls and DEL, the bidirectional formatting
characters (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), the line and paragraph
separators, and lone surrogates (which no terminal encoding can print at all). Backslashes are
left alone: the escaped text is for reading, not for parsing back.
"""

from __future__ import annotations

import re

_UNSAFE = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_ONE_LINE = re.compile(f"[{_UNSAFE}]")
_MULTI_LINE = re.compile(f"(?![\n\t])[{_UNSAFE}]")


_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escaped(match: re.Match[str]) -> str:
    character = match.group()
    if character in _SHORT:
        return _SHORT[character]
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, *, multiline: bool = False) -> str:
    """``text`` with every terminal control character shown escaped.

    ``multiline`` keeps line feeds and tabs (for a block of output shown as lines);
    otherwise they are escaped too, so the text stays on one line.
    """
    return (_MULTI_LINE if multiline else _ONE_LINE).sub(_escaped, text)
