"""The docs cannot drift: every setting is documented at its default, and every link resolves.

``docs/settings.md`` and ``config/taskq.env.example`` list every field of ``Settings`` with its
environment variable and its default, and nothing else; ``config/celeryconfig.py`` shows every
setting a Celery app reads. Relative links in ``README.md`` and ``docs/*.md`` point at files
that exist, and ``#anchors`` into markdown files at headings that exist.
"""

from __future__ import annotations

import re
import socket
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

import pytest

from celery_taskq.core.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SETTINGS_DOC = PROJECT_ROOT / "docs" / "settings.md"
ENV_EXAMPLE = PROJECT_ROOT / "config" / "taskq.env.example"
CELERYCONFIG = PROJECT_ROOT / "config" / "celeryconfig.py"
MARKDOWN_FILES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]

ENV_PREFIX = "TASKQ_"
CELERY_PREFIX = "taskq_"
EMPTY = "empty"
"""How docs/settings.md writes an empty default (the text after it says what empty means)."""

COMPUTED_DEFAULTS = {"hostname": socket.gethostname}
"""Fields whose declared default is empty and filled in when the settings are resolved."""

NOT_READ_FROM_CELERY_CONFIG = {"redact_patterns", "dashboard_token", "flower_url"}
"""Settings only the dashboard and the CLI use; a Celery app's config reaches them only through
``celery-taskq -A`` (or ``TASKQ_APP``), so ``config/celeryconfig.py`` need not show them."""

SETTINGS_ROW = re.compile(r"^\|\s*`(\w+)`\s*\|(.*)\|\s*$", re.MULTILINE)
CODE_SPAN = re.compile(r"`([^`]*)`")
ENV_ASSIGNMENT = re.compile(r"^(?:#\s*)?(TASKQ_\w+)=(.*)$", re.MULTILINE)
ENV_NAME = re.compile(r"\bTASKQ_[A-Z0-9_]+")
CELERY_KEY = re.compile(r"^#?\s*taskq_(\w+)\s*[:=]", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def setting_fields() -> dict[str, Field[Any]]:
    """The fields of ``Settings`` by name."""
    return {field.name: field for field in fields(Settings)}


def env_name(name: str) -> str:
    """The environment variable of setting ``name``."""
    return ENV_PREFIX + name.upper()


def assert_default(field: Field[Any], written: str, where: str) -> None:
    """``written`` (as it would be given in ``TASKQ_X``) is the declared default of ``field``."""
    assert field.default is not MISSING, f"{field.name} has no plain default"
    if field.name in COMPUTED_DEFAULTS:
        # Declared empty, filled in on resolve: documented as empty, and really computed so.
        assert field.default == "", field.name
        assert written == "", f"{where}: {field.name} should be documented as empty"
        computed = getattr(Settings.resolve(environ={}), field.name)
        assert computed == COMPUTED_DEFAULTS[field.name](), field.name
        return
    parsed = getattr(Settings.resolve(environ={env_name(field.name): written}), field.name)
    assert parsed == field.default, (
        f"{where}: {field.name} default {written!r} != {field.default!r}"
    )


def settings_table() -> dict[str, list[str]]:
    """The rows of docs/settings.md's table: setting name -> its other cells."""
    rows: dict[str, list[str]] = {}
    for name, rest in SETTINGS_ROW.findall(SETTINGS_DOC.read_text()):
        assert name not in rows, f"{name} is listed twice"
        rows[name] = [cell.strip() for cell in rest.split("|")]
    return rows


def documented_default(cell: str) -> str:
    """A default cell's value: the text of its first code span, or "" for "empty: ..."."""
    if cell.startswith(EMPTY):
        return ""
    found = CODE_SPAN.match(cell)
    assert found is not None, f"default cell {cell!r} starts neither with a code span nor empty"
    return found.group(1)


def test_settings_doc_lists_every_setting_and_nothing_else() -> None:
    # Given the settings table, When its rows are read, Then they are exactly the fields
    assert set(settings_table()) == set(setting_fields())


@pytest.mark.parametrize("name", sorted(setting_fields()))
def test_settings_doc_gives_env_var_celery_key_and_default(name: str) -> None:
    # Given a setting's row
    env_cell, celery_cell, default_cell, read_by, meaning = settings_table()[name][:5]
    # Then it names its env var and Celery key, its default, its readers and what it does
    assert CODE_SPAN.findall(env_cell) == [env_name(name)]
    assert CODE_SPAN.findall(celery_cell)[0] == CELERY_PREFIX + name
    assert_default(setting_fields()[name], documented_default(default_cell), "docs/settings.md")
    assert read_by, name
    assert meaning, name
    if name in COMPUTED_DEFAULTS:
        assert "host name" in default_cell


def test_settings_doc_names_only_real_variables() -> None:
    # Given every TASKQ_ name the page mentions, Then each is a setting's variable
    known = {env_name(name) for name in setting_fields()}
    assert set(ENV_NAME.findall(SETTINGS_DOC.read_text())) <= known


def test_only_the_settings_doc_has_a_settings_table() -> None:
    # Given the other pages, Then none describes settings in a table of its own
    for path in MARKDOWN_FILES:
        if path != SETTINGS_DOC:
            assert not re.search(r"^\|\s*`TASKQ_", path.read_text(), re.MULTILINE), path.name


def test_env_example_sets_every_setting_once_at_its_default() -> None:
    # Given the env example's assignment lines (commented ones included)
    text = ENV_EXAMPLE.read_text()
    assignments = ENV_ASSIGNMENT.findall(text)
    by_variable = {variable: value.strip() for variable, value in assignments}
    # Then each setting appears once, at its default, and no other variable is assigned
    assert len(by_variable) == len(assignments), "a variable is assigned twice"
    assert set(by_variable) == {env_name(name) for name in setting_fields()}
    for name, field in setting_fields().items():
        assert_default(field, by_variable[env_name(name)], "config/taskq.env.example")
    # And every TASKQ_ name in the comments is a setting too
    assert set(ENV_NAME.findall(text)) <= set(by_variable)


def test_celeryconfig_shows_every_setting_a_celery_app_reads() -> None:
    # Given the taskq_* keys config/celeryconfig.py sets or shows in a comment
    # (tests/test_compose.py checks that they are settings, at their defaults)
    shown = set(CELERY_KEY.findall(CELERYCONFIG.read_text()))
    # Then every setting a Celery app reads from its config is among them
    assert set(setting_fields()) - NOT_READ_FROM_CELERY_CONFIG <= shown


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = INLINE_CODE.sub(lambda code: code.group(0)[1:-1], heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, numbered as GitHub numbers repeats."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    """The relative link targets of a markdown file, outside code."""
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text()))
    return [
        target
        for target in LINK.findall(text)
        if not re.match(r"[a-z][a-z0-9+.-]*:", target) and not target.startswith("//")
    ]


@pytest.mark.parametrize("path", MARKDOWN_FILES, ids=lambda path: path.name)
def test_relative_links_resolve(path: Path) -> None:
    # Given every relative link of a page
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        # Then the file exists, and an anchor into a markdown file names one of its headings
        assert linked.exists(), f"{path.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{path.name}: no heading for {target}"
