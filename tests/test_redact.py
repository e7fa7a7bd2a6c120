"""Redaction of credentials inside values: URLs and DSNs with passwords, ``key=value`` text.

Secret *keys* are tested in ``tests/test_security.py``; these tests are about what a value's text
holds. The property tests run on arbitrary JSON-able values (deep, surrogate-laden, huge keys),
and on values with URLs carrying passwords planted anywhere in them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_taskq.core.settings import DEFAULT_REDACT_PATTERNS
from celery_taskq.reports.redact import MASK, REDACTED, mask_credentials, redact

PATTERNS = DEFAULT_REDACT_PATTERNS


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # URLs and DSNs: the user stays, the password goes.
        ("postgresql://u:p@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql+psycopg://taskq:taskq@postgres:5432/taskq",
            "postgresql+psycopg://taskq:***@postgres:5432/taskq",
        ),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://default:pw@cache.example:6380", "rediss://default:***@cache.example:6380"),
        ("amqp://u:p@h//", "amqp://u:***@h//"),
        ("mysql://root:hunter2@[::1]:3306/app", "mysql://root:***@[::1]:3306/app"),
        (
            "mongodb+srv://u:p%40ss@cluster0.example.net/db?retryWrites=true",
            "mongodb+srv://u:***@cluster0.example.net/db?retryWrites=true",
        ),
        ("sqla+postgresql://u:p@h/db", "sqla+postgresql://u:***@h/db"),
        ("https://u:p@example.com/path?q=1#frag", "https://u:***@example.com/path?q=1#frag"),
        ("ftp://anonymous:me@ftp.example", "ftp://anonymous:***@ftp.example"),
        # Passwords holding characters a URL should have encoded.
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://user:ab/cd+ef==@host/db", "postgresql://user:***@host/db"),
        ("redis://:a?b#c@h:6379", "redis://:***@h:6379"),
        # In running text, several in one string, glued by punctuation.
        (
            "could not connect to postgresql://u:p@h/db: refused",
            "could not connect to postgresql://u:***@h/db: refused",
        ),
        ("pg://u:p@h,pg://v:q@h2", "pg://u:***@h,pg://v:***@h2"),
        ('{"url": "redis://:pw@h"}', '{"url": "redis://:***@h"}'),
        ("(amqp://guest:guest@rabbit:5672/)", "(amqp://guest:***@rabbit:5672/)"),
        # A user part alone is kept, unless it is long enough to be a token.
        ("https://user@example.com/x", "https://user@example.com/x"),
        (
            "https://ghp_0123456789abcdefghijABCDEFGHIJ@github.com/o/r.git",
            "https://***@github.com/o/r.git",
        ),
        # key=value text: libpq conninfo, ODBC, query strings.
        (
            "host=h port=5432 dbname=d user=u password=secret",
            "host=h port=5432 dbname=d user=u password=***",
        ),
        ("host=h password='two words' sslmode=require", "host=h password=*** sslmode=require"),
        ('password = "q\\"uoted" user=u', "password = *** user=u"),
        (
            "Server=h;Database=d;User Id=u;Password=secret;",
            "Server=h;Database=d;User Id=u;Password=***;",
        ),
        ("Driver={X};Pwd={a;b};Uid=u", "Driver={X};Pwd=***;Uid=u"),
        ("PASSWD=x", "PASSWD=***"),
        (
            "postgresql://h/db?user=u&password=secret&sslmode=require",
            "postgresql://h/db?user=u&password=***&sslmode=require",
        ),
        (
            "https://h/callback?access_token=abc&state=1",
            "https://h/callback?access_token=***&state=1",
        ),
        ("user=u,password=s,port=1", "user=u,password=***,port=1"),
        ("jdbc:postgresql://h/db?password=x", "jdbc:postgresql://h/db?password=***"),
    ],
)
def test_credentials_inside_text_are_masked(text: str, shown: str) -> None:
    assert mask_credentials(text, PATTERNS) == shown
    assert redact({"value": text}, PATTERNS) == {"value": shown}


@pytest.mark.parametrize(
    "text",
    [
        "https://example.com/a?b=c",
        "https://api.example.com:443/users?email=bob@example.com",
        "redis://h:6379/0",
        "postgresql://h:5432/db",
        "a@b.com",
        "mailto:u@example.com",
        "user:pass@host (no scheme)",
        "x = 1 and host=h user=u",
        "the word password in a value",
        "2 + 2 = 4",
        "",
    ],
)
def test_text_without_credentials_is_kept(text: str) -> None:
    assert mask_credentials(text, PATTERNS) == text


def test_keys_and_values_are_masked_at_any_depth_and_secret_keys_still_win() -> None:
    data = {
        "db": "postgresql://u:p@h/db",
        "replicas": [{"url": "redis://:pw@r1"}, ["amqp://u:p@h//"]],
        "postgresql://k:keypw@h/db": 1,
        "password": "postgresql://u:p@h/db",
        "n": 5,
        "ok": None,
    }
    assert redact(data, PATTERNS) == {
        "db": "postgresql://u:***@h/db",
        "replicas": [{"url": "redis://:***@r1"}, ["amqp://u:***@h//"]],
        "postgresql://k:***@h/db": 1,
        "password": REDACTED,
        "n": 5,
        "ok": None,
    }


def test_no_patterns_shows_everything() -> None:
    data = {"url": "postgresql://u:p@h/db", "password": "x", "dsn": "password=x"}
    assert redact(data, ()) == data


def test_the_stored_value_is_left_as_it_was() -> None:
    data = {"url": "postgresql://u:p@h/db", "list": ["redis://:pw@h"]}
    before = json.dumps(data)
    redact(data, PATTERNS)
    assert json.dumps(data) == before


def test_nesting_deeper_than_the_recursion_limit_is_redacted() -> None:
    deep: Any = "postgresql://u:p@h/db"
    for _ in range(5000):
        deep = [deep]
    shown = redact(deep, PATTERNS)
    for _ in range(5000):
        shown = shown[0]
    assert shown == f"postgresql://u:{MASK}@h/db"


@pytest.mark.parametrize(
    "hostile",
    [
        "a://b:" * 50_000,  # many schemes, no "@"
        "k={" * 50_000,  # many unclosed braces
        "k='" * 50_000,
        "x" * 500_000,
        "a://" * 50_000,
        "password=" * 50_000,
    ],
    ids=["schemes", "braces", "quotes", "letters", "empty-authorities", "keys"],
)
def test_hostile_text_is_masked_in_linear_time(hostile: str) -> None:
    # Linear time: each of these took minutes with a backtracking pattern; no clock is read,
    # the test's own timeout is the bound.
    assert isinstance(mask_credentials(hostile * 4, PATTERNS), str)


# -- properties ----------------------------------------------------------------------------

any_text = st.text(st.characters(exclude_categories=()), max_size=40)  # lone surrogates too
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=30,
)

USERINFO_CHARS = "0123456789-._~!$&'()+,;=%"
"""Characters a URL's password may hold unencoded (RFC 3986 userinfo, less ":" and the mask's
"*"); no other text below uses them, so a password found in the output can only have leaked."""

filler = st.text(
    st.characters(codec="utf-8", exclude_characters=USERINFO_CHARS + ":/?#@"), max_size=12
)
urls = st.builds(
    lambda scheme, user, password, host, path: f"{scheme}://{user}:{password}@{host}{path}",
    st.sampled_from(["postgresql", "postgresql+psycopg", "redis", "amqp", "https", "mongodb+srv"]),
    st.text("abcdefghij", max_size=8),
    st.text(USERINFO_CHARS, min_size=6, max_size=24),
    st.sampled_from(["h", "db.example", "[::1]", "h:5432"]),
    st.sampled_from(["", "/", "/db", "//", "/0?x=y", "#f"]),
)
texts_with_urls = st.builds(
    lambda parts: "".join(parts), st.lists(st.one_of(filler, urls), min_size=1, max_size=5)
)
values_with_urls = st.recursive(
    st.none() | st.integers() | texts_with_urls,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(texts_with_urls, children, max_size=4)
    ),
    max_leaves=20,
)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def strings_in(value: Any) -> list[str]:
    """Every string of a JSON-able value, keys included."""
    found: list[str] = []
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            found += [key for key in item if isinstance(key, str)]
            pending += item.values()
        elif isinstance(item, list):
            pending += item
    return found


def passwords_in(value: Any) -> list[str]:
    """The passwords of the URLs planted in ``value`` (userinfo after the first colon)."""
    found = []
    for text in strings_in(value):
        for piece in text.split("://")[1:]:
            userinfo = piece.partition("@")[0]
            if ":" in userinfo:
                found.append(userinfo.partition(":")[2])
    return found


@given(value=json_values)
@PROPERTY
def test_redaction_never_raises_and_keeps_the_shape(value: Any) -> None:
    shown = redact(value, PATTERNS)
    assert type(shown) is type(value)
    if isinstance(value, list):
        assert len(shown) == len(value)


@given(value=values_with_urls)
@PROPERTY
def test_no_password_of_a_url_is_ever_shown(value: Any) -> None:
    planted = [password for password in passwords_in(value) if password]
    shown = strings_in(redact(value, PATTERNS))
    for password in planted:
        assert not any(password in text for text in shown), (password, shown)
