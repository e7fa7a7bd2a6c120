"""Redaction of secrets in task data wherever it is shown: CLI, dashboard, HTTP API.

Two rules, at any depth of nested objects and lists:

* **Secret keys.** The value of every key that matches a configured pattern
  (``TASKQ_REDACT_PATTERNS``) is shown as :data:`REDACTED`. Matching ignores case and the
  separators ``_``, ``-``, ``.`` and spaces, and looks for the pattern anywhere in the key: the
  pattern ``api_key`` matches ``api_key``, ``X-Api-Key`` and ``stripeApiKey``.
* **Credentials inside text** (values and keys alike), see :func:`mask_credentials`:
  ``scheme://user:password@host`` URLs and DSNs show the user and mask the password
  (``postgresql://u:***@h/db``, ``redis://:***@h:6379/0``); a user part alone that is long
  enough to be a token (``https://<token>@github.com``) is masked whole; and in ``key=value``
  text (libpq conninfo ``host=h password=secret``, ODBC ``Pwd=secret;``, query strings
  ``?token=abc``) the value of a secret key is masked.

No patterns configured (an empty ``TASKQ_REDACT_PATTERNS``) turns both rules off.

Only what is shown changes: the stored ``TaskData`` and what the handler receives as
``run.data`` stay as queued, and so does :func:`celery_taskq.get_task`, a program's own read.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any, TypeVar

from celery_taskq.core.listing import TaskPage
from celery_taskq.core.snapshots import TaskSummary

REDACTED = "[redacted]"
"""What the value of a secret key is shown as."""

MASK = "***"
"""What a password (or token) inside a URL or a ``key=value`` text is shown as."""

DSN_PASSWORD_KEYS = ("password", "passwd", "pwd")
"""Keys of ``key=value`` text whose value is masked even when no pattern names them."""

TOKEN_LIKE_USER_LENGTH = 20
"""A URL's user part without a password, this long or longer, is taken for a token and masked."""

_SEPARATORS = re.compile(r"[\s_.\-]+")

_AUTHORITY_END = re.compile(r"[\s/?#]")
# A password holding an unencoded / ? or # (as SQLAlchemy URLs allow): bounded, so that text
# with many "://" and no "@" is still read in linear time.
_LOOSE_USERINFO = re.compile(r"([^\s:/?#@]*):([^\s@]{1,256})@")
_PORT_AND_PATH = re.compile(r"\d*(?:[/?#].*)?", re.DOTALL)

# key=value with an optional quoted value ('...', "..." or ODBC's {...}). The key starts where
# no key character precedes it, so that a long word is scanned once rather than once per
# position; quoted values are bounded for the same reason.
_KEY_VALUE = re.compile(
    r"""(?<![\w.\-])([A-Za-z_][\w.\-]*)(\s*=\s*)"""
    r"""('(?:[^'\\]|\\.){0,1024}'|"(?:[^"\\]|\\.){0,1024}"|\{[^}]{0,1024}\}|[^\s;&,]*)"""
)

_Task = TypeVar("_Task", bound=TaskSummary)


def _normal(text: str) -> str:
    return _SEPARATORS.sub("", text).casefold()


def key_matcher(patterns: Iterable[str]) -> tuple[str, ...]:
    """The patterns in the form keys are compared with (empty ones dropped)."""
    return tuple(normal for pattern in patterns if (normal := _normal(pattern)))


def is_secret_key(key: Any, patterns: Iterable[str]) -> bool:
    """Whether a key of ``data`` holds a secret under ``patterns``."""
    if not isinstance(key, str):
        return False
    return _matches(key, key_matcher(patterns))


def _matches(key: str, matchers: tuple[str, ...]) -> bool:
    normal = _normal(key)
    return any(matcher in normal for matcher in matchers)


def _masked_userinfo(userinfo: str) -> str:
    user, colon, _password = userinfo.partition(":")
    if colon:
        return f"{user}:{MASK}"
    return MASK if len(user) >= TOKEN_LIKE_USER_LENGTH else user


def _mask_urls(text: str) -> str:
    # Every "://" starts an authority, whatever scheme (or none) precedes it: it runs to the
    # first / ? # or space, and the loose form never reaches into the next "://".
    starts = [found.start() for found in re.finditer("://", text)]
    parts: list[str] = []
    position = 0
    for index, start in enumerate(starts):
        after = start + 3
        limit = starts[index + 1] if index + 1 < len(starts) else len(text)
        end_found = _AUTHORITY_END.search(text, after, limit)
        end = end_found.start() if end_found else limit
        userinfo, at, _host = text[after:end].rpartition("@")
        if at:
            parts += [text[position:after], _masked_userinfo(userinfo), "@"]
            position = after + len(userinfo) + 1
            continue
        loose = _LOOSE_USERINFO.match(text, after, limit)
        if loose is not None and not _PORT_AND_PATH.fullmatch(loose.group(2)):
            parts += [text[position:after], f"{loose.group(1)}:{MASK}@"]
            position = loose.end()
    parts.append(text[position:])
    return "".join(parts)


def mask_credentials(text: str, patterns: Iterable[str]) -> str:
    """``text`` with the passwords of URLs and the secret values of ``key=value`` pairs masked.

    A ``key=value`` value is masked when its key matches ``patterns`` or is one of
    :data:`DSN_PASSWORD_KEYS`.
    """
    return _mask(text, (*key_matcher(patterns), *DSN_PASSWORD_KEYS))


def _mask(text: str, matchers: tuple[str, ...]) -> str:
    if "://" in text:
        text = _mask_urls(text)
    if "=" in text:

        def mask_value(match: re.Match[str]) -> str:
            key, separator = match.group(1), match.group(2)
            return f"{key}{separator}{MASK}" if _matches(key, matchers) else match.group(0)

        text = _KEY_VALUE.sub(mask_value, text)
    return text


def redact(data: Any, patterns: Iterable[str]) -> Any:
    """A copy of ``data`` with secret keys' values replaced and credentials in text masked."""
    matchers = key_matcher(patterns)
    if not matchers:
        return data
    return _redact(data, matchers, (*matchers, *DSN_PASSWORD_KEYS))


def _redact(data: Any, matchers: tuple[str, ...], text_matchers: tuple[str, ...]) -> Any:
    # An explicit stack instead of recursion: stored data may be nested deeper than Python's
    # recursion limit, and showing it must not fail.
    root: list[Any] = [None]
    pending: list[tuple[Any, Any, Any]] = [(data, root, 0)]
    while pending:
        value, parent, slot = pending.pop()
        if isinstance(value, dict):
            copy: dict[Any, Any] = {}
            parent[slot] = copy
            for key, item in value.items():
                shown_key = _mask(key, text_matchers) if isinstance(key, str) else key
                if isinstance(key, str) and _matches(key, matchers):
                    copy[shown_key] = REDACTED
                else:
                    copy[shown_key] = None
                    pending.append((item, copy, shown_key))
        elif isinstance(value, list):
            items: list[Any] = [None] * len(value)
            parent[slot] = items
            pending.extend((item, items, index) for index, item in enumerate(value))
        elif isinstance(value, str):
            parent[slot] = _mask(value, text_matchers)
        else:
            parent[slot] = value
    return root[0]


def redacted_task(task: _Task, patterns: Iterable[str]) -> _Task:
    """The snapshot with its ``task_data`` redacted, for showing."""
    return dataclasses.replace(task, task_data=redact(task.task_data, patterns))


def redacted_page(page: TaskPage, patterns: Iterable[str]) -> TaskPage:
    """The page with every task's ``task_data`` redacted, for showing."""
    patterns = tuple(patterns)
    return dataclasses.replace(
        page, tasks=tuple(redacted_task(task, patterns) for task in page.tasks)
    )
