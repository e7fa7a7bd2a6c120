"""How a SQLite connection puts its database file in WAL mode: once, and through a BUSY."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from celery_taskq.core.storage.database import Database, use_wal


class _Cursor:
    """A DB-API cursor that answers the journal-mode pragmas as scripted, and records them."""

    def __init__(self, mode: str, busy: int = 0, error: str = "database is locked") -> None:
        self.mode = mode
        self.busy = busy
        self.error = error
        self.statements: list[str] = []
        self._row: tuple[str] | None = None

    def execute(self, statement: str) -> _Cursor:
        self.statements.append(statement)
        if self.busy:
            self.busy -= 1
            raise sqlite3.OperationalError(self.error)
        if statement == "PRAGMA journal_mode = WAL":
            self.mode = "wal"
        self._row = (self.mode,)
        return self

    def fetchone(self) -> Any:
        return self._row


def test_a_database_already_in_wal_mode_is_only_asked_for_its_mode() -> None:
    cursor = _Cursor("wal")
    use_wal(cursor)
    assert cursor.statements == ["PRAGMA journal_mode"]


def test_a_database_in_another_mode_is_switched_to_wal() -> None:
    cursor = _Cursor("delete")
    use_wal(cursor)
    assert cursor.statements == ["PRAGMA journal_mode", "PRAGMA journal_mode = WAL"]
    assert cursor.mode == "wal"


def test_a_busy_answer_is_tried_again() -> None:
    cursor = _Cursor("wal", busy=2)
    use_wal(cursor, timeout=5)
    assert cursor.statements == ["PRAGMA journal_mode"] * 3


def test_a_database_busy_for_longer_than_the_timeout_fails_with_sqlite_s_error() -> None:
    cursor = _Cursor("wal", busy=1000)
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        use_wal(cursor, timeout=0.2)
    assert 2 <= len(cursor.statements) < 1000


def test_another_error_is_not_retried() -> None:
    cursor = _Cursor("wal", busy=5, error="file is not a database")
    with pytest.raises(sqlite3.OperationalError, match="not a database"):
        use_wal(cursor, timeout=5)
    assert cursor.statements == ["PRAGMA journal_mode"]


def test_a_new_database_file_is_left_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "taskq.db"
    database = Database(f"sqlite:///{path}")
    with database.transaction() as connection:
        connection.exec_driver_sql("CREATE TABLE probe (x INTEGER)")
    database.close()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        raw.close()
