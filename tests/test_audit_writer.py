"""The native audit's writer: batched behind the caller, in order, fork-safe, and what a crash
of its process leaves (a prefix of what was submitted, nothing partial).

Each test writes numbered rows into a probe table through :class:`AuditWriter`; a row records
how many rows were committed before it, so rows written out of order show at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Connection, column, event, table, text
from sqlalchemy import insert as insert_into

from celery_taskq.celery.audit_writer import AuditOp, AuditWriter, GroupedOp, MergingOp
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests.helpers import wait_for

CREATE_PROBE = "CREATE TABLE audit_probe (n INTEGER PRIMARY KEY, written_before INTEGER NOT NULL)"
INSERT_PROBE = "INSERT INTO audit_probe (n, written_before) SELECT :n, count(*) FROM audit_probe"


def insert(n: int) -> AuditOp:
    """An operation writing row ``n``."""

    def op(connection: Connection) -> None:
        connection.execute(text(INSERT_PROBE), {"n": n})

    return op


def failing(connection: Connection) -> None:
    """An operation that always fails."""
    raise ValueError("a bad audit operation")


def rows(database: Database) -> list[tuple[int, int]]:
    """``(n, written_before)`` of every probe row, in ``n`` order."""
    with database.transaction(read_only=True) as connection:
        found = connection.execute(text("SELECT n, written_before FROM audit_probe ORDER BY n"))
        return [(int(n), int(before)) for n, before in found]


def assert_in_order(found: list[tuple[int, int]]) -> None:
    """Each row was committed after exactly the rows of smaller ``n``."""
    assert [before for _, before in found] == list(range(len(found)))


@pytest.fixture
def probe(database: Database) -> Database:
    """The test database with an empty probe table."""
    with database.transaction() as connection:
        connection.exec_driver_sql(CREATE_PROBE)
    return database


@pytest.fixture
def writers() -> Iterator[list[AuditWriter]]:
    """Writers made by a test, closed at its end."""
    made: list[AuditWriter] = []
    yield made
    for writer in made:
        writer.close(5)


def make_writer(
    writers: list[AuditWriter], database: Database, settings: Settings, **changes: object
) -> AuditWriter:
    """A writer on ``database`` with ``settings`` changed by ``changes``."""
    changed = replace(settings, **changes)  # type: ignore[arg-type]
    writer = AuditWriter(lambda: database, lambda: changed)
    writers.append(writer)
    return writer


def count_commits(database: Database) -> list[int]:
    """A one-item list counting the commits on ``database`` from now on."""
    commits = [0]

    def on_commit(_connection: Connection) -> None:
        commits[0] += 1

    event.listen(database.engine, "commit", on_commit)
    return commits


def test_submit_returns_at_once_and_the_thread_writes_in_order_in_batches(
    probe: Database, settings: Settings, writers: list[AuditWriter]
) -> None:
    # Given a write-behind writer whose first operation blocks until the test lets it go
    writer = make_writer(writers, probe, settings, audit_batch_size=100, audit_batch_window=0.01)
    release = threading.Event()
    commits = count_commits(probe)

    def blocked(connection: Connection) -> None:
        assert release.wait(30)
        insert(0)(connection)

    # When 500 operations are submitted
    writer.submit(blocked)
    for n in range(1, 500):
        writer.submit(insert(n))

    # Then every submit returned while the first write was still waiting
    assert rows(probe) == []
    release.set()
    assert writer.flush(30)
    found = rows(probe)
    assert [n for n, _ in found] == list(range(500))
    assert_in_order(found)
    assert writer.written == 500
    assert writer.failures == 0
    assert 5 <= commits[0] <= 20  # batches of at most 100, not one transaction per write


def test_a_failing_operation_costs_only_itself(
    probe: Database,
    settings: Settings,
    writers: list[AuditWriter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a batch with one bad operation in the middle
    writer = make_writer(writers, probe, settings, audit_batch_window=0.2)
    with caplog.at_level(logging.ERROR, logger="celery_taskq.celery.audit_writer"):
        for n in range(10):
            writer.submit(failing if n == 5 else insert(n), describe=f"probe {n}")
        # When it is written
        assert writer.flush(30)

    # Then the others are written, in order, and the bad one is logged and counted
    found = rows(probe)
    assert [n for n, _ in found] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert_in_order(found)
    assert writer.failures == 1
    assert [record.getMessage() for record in caplog.records] == ["audit write probe 5 failed"]
    assert caplog.records[0].action == "audit_failed"  # type: ignore[attr-defined]


PROBE_ROW = insert_into(table("audit_probe", column("n"), column("written_before")))


class ProbeRow(GroupedOp):
    """Row ``n``, with the consecutive rows of its batch as one ``executemany``."""

    def __init__(self, n: int, written_before: int) -> None:
        self.params = {"n": n, "written_before": written_before}

    @property
    def group(self) -> object:
        return ProbeRow

    def run_group(self, connection: Connection, ops: Sequence[GroupedOp]) -> None:
        rows = [op.params for op in ops if isinstance(op, ProbeRow)]
        connection.execute(PROBE_ROW, rows[0] if len(rows) == 1 else rows)


def test_consecutive_writes_of_one_group_are_written_as_one_executemany(
    probe: Database,
    settings: Settings,
    writers: list[AuditWriter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a batch: a plain write, 100 rows of one statement (row 50 a duplicate), a plain write
    writer = make_writer(writers, probe, settings, audit_batch_window=0.2)
    statements: list[bool] = []

    def on_execute(*args: object) -> None:
        _connection, _cursor, statement, _parameters, _context, executemany = args
        if "audit_probe" in str(statement):
            statements.append(bool(executemany))

    event.listen(probe.engine, "before_cursor_execute", on_execute)
    writer.submit(insert(0))
    for n in range(1, 101):
        writer.submit(ProbeRow(49 if n == 50 else n, n))
    writer.submit(insert(101))
    with caplog.at_level(logging.ERROR, logger="celery_taskq.celery.audit_writer"):
        assert writer.flush(30)

    # Then the 100 rows went as one executemany, which failed whole and was re-run row by row:
    # the duplicate alone is refused, the rest are written in order
    assert statements[:3] == [False, True, False]
    found = rows(probe)
    assert [n for n, _ in found] == [n for n in range(102) if n != 50]
    assert found[-1] == (101, 100)  # after all the others
    assert writer.failures == 1

    # And without a bad row, one executemany is all they cost
    statements.clear()
    for n in range(200, 300):
        writer.submit(ProbeRow(n, 0))
    assert writer.flush(30)
    assert statements == [True]
    assert len(rows(probe)) == 201


class ProbeEnd(MergingOp):
    """Writes row ``n + 1000`` after its start wrote row ``n``; merged, a group writes both."""

    def __init__(self, start: AuditOp, n: int, groups: list[list[int]]) -> None:
        self.start, self.n, self.groups = start, n, groups

    @property
    def merges(self) -> object:
        return self.start

    def merged(self) -> ProbeBoth:
        return ProbeBoth(self.n, self.groups)

    def __call__(self, connection: Connection) -> None:
        insert(self.n + 1000)(connection)


class ProbeBoth(GroupedOp):
    """Rows ``n`` and ``n + 1000`` at once; each group's ``n`` are noted in ``groups``."""

    def __init__(self, n: int, groups: list[list[int]]) -> None:
        self.n, self.groups = n, groups

    @property
    def group(self) -> object:
        return ProbeBoth

    def run_group(self, connection: Connection, ops: Sequence[GroupedOp]) -> None:
        both = [op.n for op in ops if isinstance(op, ProbeBoth)]
        self.groups.append(both)
        for n in both:
            insert(n)(connection)
            insert(n + 1000)(connection)


def test_an_operation_whose_earlier_one_is_in_its_batch_writes_both_once(
    probe: Database, settings: Settings, writers: list[AuditWriter]
) -> None:
    # Given starts and ends of five "attempts", interleaved, in one batch, with a plain write
    writer = make_writer(writers, probe, settings, audit_batch_window=0.2)
    groups: list[list[int]] = []
    starts = {n: insert(n) for n in range(5)}
    writer.submit(starts[0])
    writer.submit(starts[1])
    writer.submit(ProbeEnd(starts[0], 0, groups))
    writer.submit(ProbeEnd(starts[1], 1, groups))
    writer.submit(insert(500))
    writer.submit(starts[2])
    writer.submit(ProbeEnd(starts[2], 2, groups))
    assert writer.flush(30)

    # Then each start was written once, by its end's merged write, at the end's place, and
    # consecutive merged writes ran as one group
    assert groups == [[0, 1], [2]]
    assert [n for n, _ in rows(probe)] == [0, 1, 2, 500, 1000, 1001, 1002]
    assert writer.written == 7  # every submitted operation is done
    assert writer.failures == 0

    # And an end whose start was written in an earlier batch writes only itself
    writer.submit(starts[3])
    assert writer.flush(30)
    writer.submit(ProbeEnd(starts[3], 3, groups))
    assert writer.flush(30)
    assert groups == [[0, 1], [2]]
    assert [n for n, _ in rows(probe)][-2:] == [1002, 1003]
    assert 3 in [n for n, _ in rows(probe)]

    # And a batch that fails (a bad operation in it) is re-run one by one, still merged
    writer.submit(starts[4])
    writer.submit(failing)
    writer.submit(ProbeEnd(starts[4], 4, groups))
    assert writer.flush(30)
    assert groups[-1] == [4]
    found = [n for n, _ in rows(probe)]
    assert found.count(4) == 1
    assert found.count(1004) == 1
    assert writer.failures == 1


def test_without_write_behind_each_write_is_committed_before_submit_returns(
    probe: Database, settings: Settings, writers: list[AuditWriter]
) -> None:
    writer = make_writer(writers, probe, settings, audit_write_behind=False)
    for n in range(3):
        writer.submit(insert(n))
        assert [found for found, _ in rows(probe)] == list(range(n + 1))
    writer.submit(failing)
    assert writer.failures == 1
    assert not any(t.name == "celery_taskq-audit-writer" for t in threading.enumerate())


def test_a_full_queue_is_written_by_the_caller_in_order(
    probe: Database, settings: Settings, writers: list[AuditWriter]
) -> None:
    # Given a writer gathering for 30 s, whose queue holds 3 operations
    writer = make_writer(writers, probe, settings, audit_batch_window=30.0)
    writer.queue_limit = 3
    for n in range(3):
        writer.submit(insert(n))
    assert rows(probe) == []
    # When a fourth is submitted
    writer.submit(insert(3))
    # Then its caller wrote the backlog and its own, in order, and nothing was dropped
    found = rows(probe)
    assert [n for n, _ in found] == list(range(4))
    assert_in_order(found)
    writer.submit(insert(4))
    assert writer.flush(30)
    assert [n for n, _ in rows(probe)] == list(range(5))
    assert writer.failures == 0


def test_an_outage_keeps_the_writes_queued_in_order_and_a_full_queue_drops_only_new_ones(
    tmp_path: Path, writers: list[AuditWriter]
) -> None:
    # Given a database that is unreachable (its directory does not exist yet)
    directory = tmp_path / "later"
    database = Database(f"sqlite:///{directory / 'audit.db'}")
    writer = make_writer(writers, database, Settings(), audit_batch_window=0.5)
    writer.queue_limit = 5
    try:
        # When 7 operations are submitted during the outage
        for n in range(7):
            writer.submit(insert(n), describe=f"probe {n}")
        # Then the first 5 wait in memory and the 2 that found the queue full are dropped
        assert not writer.flush(0.3)
        assert writer.failures == 2
        assert writer.written == 0

        # When the database comes back
        directory.mkdir()
        with database.transaction() as connection:
            connection.exec_driver_sql(CREATE_PROBE)

        # Then the waiting operations are written, in order
        assert writer.flush(30)
        found = rows(database)
        assert [n for n, _ in found] == list(range(5))
        assert_in_order(found)
        assert writer.failures == 2
    finally:
        database.close()


def _submit_in_child(writer: AuditWriter, n: int) -> None:
    writer.submit(insert(n))
    os._exit(0 if writer.flush(30) and writer.written == 1 else 1)


def test_a_forked_child_starts_its_own_writer_and_never_writes_the_parents_queue(
    probe: Database, settings: Settings, writers: list[AuditWriter]
) -> None:
    # Given a parent whose writer thread holds a queued operation (a 1 s window)
    writer = make_writer(writers, probe, settings, audit_batch_window=1.0)
    writer.submit(insert(0))

    # When a forked child submits one and flushes
    child = multiprocessing.get_context("fork").Process(target=_submit_in_child, args=(writer, 1))
    child.start()
    child.join(60)

    # Then the child wrote its own operation with its own thread, and not the parent's
    assert child.exitcode == 0
    assert writer.flush(30)
    assert sorted(n for n, _ in rows(probe)) == [0, 1]
    assert writer.failures == 0  # row 0 written once: a second write would break its key


def _submit_closed_in_child(writer: AuditWriter, database: Database) -> None:
    writer.submit(insert(1))
    written_at_once = [n for n, _ in rows(database)] == [1]
    os._exit(0 if written_at_once and writer.written == 1 else 1)


def test_a_closed_writer_stays_closed_in_a_forked_child(
    probe: Database, settings: Settings, writers: list[AuditWriter]
) -> None:
    # Given a parent's closed writer (each write made before submit() returns)
    writer = make_writer(writers, probe, settings)
    writer.close()
    # When a forked child submits through it
    child = multiprocessing.get_context("fork").Process(
        target=_submit_closed_in_child, args=(writer, probe)
    )
    child.start()
    child.join(60)
    # Then the child's write was committed before its submit() returned
    assert child.exitcode == 0


CHILD_SUBMITTED = "submitted"


def child_main(mode: str) -> None:
    """A process that submits numbered probe rows: ``kill`` submits until it is killed,
    ``exit`` submits 300 with a long window and returns at once (``atexit`` writes them)."""
    database = Database(os.environ["TASKQ_DATABASE_URL"])
    window = 0.005 if mode == "kill" else 10.0
    settings = Settings(database_url=os.environ["TASKQ_DATABASE_URL"], audit_batch_window=window)
    writer = AuditWriter(lambda: database, lambda: settings)
    if mode == "exit":
        for n in range(300):
            writer.submit(insert(n))
        return
    n = 0
    while True:
        writer.submit(insert(n))
        n += 1
        if n % 50 == 0:
            print(CHILD_SUBMITTED, n, flush=True)
            threading.Event().wait(0.001)  # let the writer thread take the GIL now and then


def run_child(
    subprocess_env: dict[str, str], mode: str, spawn: list[subprocess.Popen[str]]
) -> subprocess.Popen[str]:
    """``child_main(mode)`` in a new process."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.test_audit_writer", mode],
        env=subprocess_env,
        stdout=subprocess.PIPE,
        text=True,
    )
    spawn.append(child)
    return child


def test_a_killed_process_leaves_a_prefix_of_what_it_submitted(
    probe: Database, subprocess_env: dict[str, str], spawn: list[subprocess.Popen[str]]
) -> None:
    # Given a process submitting audit writes as fast as it can
    child = run_child(subprocess_env, "kill", spawn)
    wait_for(lambda: len(rows(probe)) >= 300, timeout=60, what="300 committed rows")

    # When it is SIGKILLed mid-stream
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    submitted = max(int(line.split()[1]) for line in (child.stdout or []) if line.strip())

    # Then the committed rows are exactly the first k submitted, each after the ones before
    found = rows(probe)
    assert [n for n, _ in found] == list(range(len(found)))
    assert_in_order(found)
    assert len(found) <= submitted + 50


def test_a_process_that_exits_writes_what_it_queued(
    probe: Database, subprocess_env: dict[str, str], spawn: list[subprocess.Popen[str]]
) -> None:
    child = run_child(subprocess_env, "exit", spawn)
    assert child.wait(60) == 0
    found = rows(probe)
    assert [n for n, _ in found] == list(range(300))
    assert_in_order(found)


def _main(argv: list[str]) -> None:
    child_main(argv[1])


if __name__ == "__main__":
    _main(sys.argv)
