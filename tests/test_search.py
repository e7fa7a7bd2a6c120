"""Searching and sorting the task list (reports/search.py) and the derived status filters
(``cancelled``, ``never-run``), on SQLite and PostgreSQL; the search's index on PostgreSQL."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, make_url, select, text, update

from celery_taskq.cli import main
from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.listing import TaskFilter, filter_conditions, list_tasks, parse_status
from celery_taskq.core.models import TaskQueue
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.migrate import current_revision, schema_differences, upgrade_database
from celery_taskq.reports import search
from celery_taskq.reports.search import MAX_OFFSET, MAX_SEARCH_LENGTH, TaskQuery, find_tasks
from tests.conftest import PROJECT_ROOT, FakeClock
from tests.helpers import drive
from tests.test_schema import HEAD_REVISION

EXPLAIN_SEARCH = f"""EXPLAIN SELECT 1 FROM "TaskQueue" WHERE {search.SEARCH_TEXT_SQL} ILIKE 'x'"""  # noqa: S608
"""The plan of a search, to see that the trigram index serves it."""


def found(database: Database, text_value: str, **options: object) -> list[int]:
    """Ids of the tasks a search finds, newest first."""
    page = find_tasks(database, TaskQuery(search=text_value, **options))  # type: ignore[arg-type]
    return [task.id for task in page.tasks]


def test_search_matches_each_searched_column_literally(
    service: TaskQueueService, database: Database
) -> None:
    # Given tasks differing in title, handler, queued-by, Celery id and data
    by_title = service.add_task("tests.handlers.Succeed", title="Monthly Invoices")
    by_handler = service.add_task("tests.handlers.AlwaysFail")
    by_user = service.add_task("tests.handlers.Succeed", queued_by="alice@example.org")
    by_celery_id = service.add_task("tests.handlers.Succeed")
    with database.transaction() as connection:
        connection.execute(
            update(TaskQueue)
            .where(TaskQueue.id == by_celery_id)
            .values(celery_task_id="5f0c1e2a-celery-id")
        )
    by_data = service.add_task(
        "tests.handlers.Succeed", {"order": {"sku": "ZX-81 100%_off\\now 'quoted'"}}
    )
    decoy = service.add_task("tests.handlers.Succeed", {"order": {"sku": "ZX-81 1000 offXnow"}})
    accented = service.add_task("tests.handlers.Succeed", {"name": "Zoë Ñúñez"})

    # Then each is found by its own value, whatever the case
    assert found(database, "monthly invoices") == [by_title]
    assert found(database, "AlwaysFail") == [by_handler]
    assert found(database, "ALICE@") == [by_user]
    assert found(database, "5f0c1e2a") == [by_celery_id]
    assert found(database, "zx-81") == [decoy, by_data]
    # And wildcards, the escape character and quotes match only themselves
    assert found(database, "100%_off") == [by_data]
    assert found(database, "%") == [by_data]
    assert found(database, "_off\\now") == [by_data]
    assert found(database, "'quoted'") == [by_data]
    assert found(database, "nothing like this") == []
    # A non-ASCII value inside the data is found as typed (SQLite stores it as \uXXXX)
    assert found(database, "Zoë Ñúñez") == [accented]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a\x00b", "search .*NUL"),
        ("x" * 10_240, f"search is 10240 characters long: at most {MAX_SEARCH_LENGTH}"),
    ],
)
def test_hostile_search_text_is_refused_with_its_reason(
    database: Database, value: str, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        find_tasks(database, TaskQuery(search=value))


def test_blank_search_lists_everything(service: TaskQueueService, database: Database) -> None:
    ids = [service.add_task("tests.handlers.Succeed") for _ in range(2)]
    assert found(database, "   ") == ids[::-1]


def test_a_search_scans_a_bounded_window_where_no_index_serves_it(
    service: TaskQueueService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given four tasks carrying the word, and a window of the newest three
    ids = [service.add_task("tests.handlers.Succeed", {"word": "needle"}) for _ in range(4)]
    monkeypatch.setattr(search, "SEARCH_WINDOW", 3)

    # When a search too short for the trigram index runs (any database)
    page = find_tasks(database, TaskQuery(search="ne"))

    # Then it finds the tasks in the window only, and says the window bounded it
    assert [task.id for task in page.tasks] == ids[:0:-1]
    assert page.window_bounded
    whole = find_tasks(database, TaskQuery(search="ne", limit=2))
    assert whole.window_bounded
    assert whole.next_before_id == ids[2]


@pytest.mark.postgresql
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # the index is PG's
def test_postgresql_search_uses_the_trigram_index_and_falls_back_without_it(
    service: TaskQueueService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert database.dialect == "postgresql"
    ids = [service.add_task("tests.handlers.Succeed", {"word": "needle"}) for _ in range(4)]
    monkeypatch.setattr(search, "SEARCH_WINDOW", 3)

    # The migration made the index on the very expression the search repeats
    with database.transaction() as connection:
        connection.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(connection.execute(text(EXPLAIN_SEARCH)).scalars())
    assert search.SEARCH_INDEX in plan
    # Through the index the search covers every task, past the window
    page = find_tasks(database, TaskQuery(search="NEEDLE"))
    assert [task.id for task in page.tasks] == ids[::-1]
    assert not page.window_bounded

    # Without the index (pg_trgm could not be created) it scans the window, and says so
    with database.transaction() as connection:
        connection.execute(text(f'DROP INDEX "{search.SEARCH_INDEX}"'))
    page = find_tasks(database, TaskQuery(search="needle"))
    assert [task.id for task in page.tasks] == ids[:0:-1]
    assert page.window_bounded


def test_sorted_pages_are_stable_with_id_as_tie_break(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    # Given five tasks over two handlers
    handlers = ["tests.handlers.Succeed", "tests.handlers.AlwaysFail"] * 2
    ids = [service.add_task(handler) for handler in [*handlers, "tests.handlers.Succeed"]]
    fail_ids, succeed_ids = [ids[1], ids[3]], [ids[0], ids[2], ids[4]]

    # Ascending by handler: the handlers in order, ids ascending within each
    ascending = find_tasks(database, TaskQuery(sort="handler", order="asc", limit=2))
    assert [task.id for task in ascending.tasks] == fail_ids
    assert ascending.next_offset == 2
    assert ascending.next_before_id is None
    rest = find_tasks(database, TaskQuery(sort="handler", order="asc", limit=2, offset=2))
    last = find_tasks(database, TaskQuery(sort="handler", order="asc", limit=2, offset=4))
    assert [task.id for task in [*rest.tasks, *last.tasks]] == succeed_ids
    assert last.next_offset is None
    # Descending by handler: ids descending within each
    descending = find_tasks(database, TaskQuery(sort="handler", order="desc"))
    assert [task.id for task in descending.tasks] == [*succeed_ids[::-1], *fail_ids[::-1]]
    # Oldest first by id, and by queue time
    assert [t.id for t in find_tasks(database, TaskQuery(sort="id", order="asc")).tasks] == ids
    queued = find_tasks(database, TaskQuery(sort="queued", order="asc", search="handlers"))
    assert [task.id for task in queued.tasks] == ids


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (TaskQuery(sort="Title; DROP TABLE x"), "unknown sort 'Title; DROP TABLE x': use one of"),
        (TaskQuery(order="sideways"), "unknown order 'sideways'"),
        (
            TaskQuery(sort="handler", offset=MAX_OFFSET + 1),
            f"offset must be from 0 to {MAX_OFFSET}",
        ),
        (TaskQuery(sort="handler", before_id=5), "before_id pages the default order only"),
        (TaskQuery(limit=0), "limit must be an integer from 1 to 1000"),
    ],
)
def test_bad_sort_or_page_is_refused(database: Database, query: TaskQuery, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        find_tasks(database, query)


def test_cancelled_and_never_run_are_derived_from_the_columns(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    # Given a task due later (no run), one with a scheduled first run, one retrying after a
    # failed run, one that succeeded and one cancelled before it ran
    later = service.add_task("tests.handlers.Succeed", scheduled_on=clock.now.replace(year=2999))
    retrying = service.add_task("tests.handlers.AlwaysFail", max_retries=3)
    succeeded = service.add_task("tests.handlers.Succeed")
    drive(service)
    waiting = service.add_task("tests.handlers.Succeed", create_run=True)
    cancelled = service.add_task("tests.handlers.Succeed")
    service.cancel_task(cancelled)

    def listed(status: str) -> set[int]:
        return {task.id for task in list_tasks(database, TaskFilter(parse_status(status))).tasks}

    # Then never-run holds the tasks no run of which started, retries excluded
    assert listed("never-run") == {later, waiting, cancelled}
    assert listed("cancelled") == {cancelled}
    assert listed("success") == {succeeded}
    assert retrying in listed("scheduled") | listed("error")
    # And the sorted, searched list takes the same filters
    query = TaskQuery(TaskFilter(parse_status("never-run")), search="Succeed", sort="queued")
    assert {task.id for task in find_tasks(database, query).tasks} == {later, waiting, cancelled}
    with pytest.raises(
        InvalidArgumentError, match=r"unknown status 'lost': use one of .*never-run"
    ):
        parse_status("lost")


@pytest.mark.postgresql
def test_the_migration_succeeds_without_the_right_to_create_pg_trgm(
    postgresql_empty_url: str,
) -> None:
    # Given a role that may create tables but not extensions (no CREATE on the database)
    owner = create_engine(postgresql_empty_url)
    with owner.begin() as connection:
        connection.execute(text("DROP ROLE IF EXISTS taskq_no_ext"))
        connection.execute(text("CREATE ROLE taskq_no_ext LOGIN PASSWORD 'pw'"))
        connection.execute(text("GRANT USAGE, CREATE ON SCHEMA public TO taskq_no_ext"))
    owner.dispose()
    url = make_url(postgresql_empty_url).set(username="taskq_no_ext", password="pw")  # noqa: S106

    # When it upgrades the database, the search index is left out and the upgrade succeeds
    upgrade_database(url)
    assert current_revision(url) == HEAD_REVISION
    assert schema_differences(url) == []
    database = Database(url)
    try:
        with database.transaction() as connection:
            assert (
                connection.execute(text("SELECT to_regclass('\"ix_TaskQueue_search\"')")).scalar()
                is None
            )
        # And the search still answers, from the window
        service = TaskQueueService(database, Settings(database_url=url.render_as_string(False)))
        task_id = service.add_task("tests.handlers.Succeed", {"word": "needle"})
        page = find_tasks(database, TaskQuery(search="needle"))
        assert [task.id for task in page.tasks] == [task_id]
    finally:
        database.close()
        cleanup = create_engine(postgresql_empty_url)
        with cleanup.begin() as connection:
            connection.execute(text("DROP OWNED BY taskq_no_ext"))
            connection.execute(text("DROP ROLE taskq_no_ext"))
        cleanup.dispose()


def test_cli_list_search_finds_by_data_and_refuses_bad_text(
    service: TaskQueueService,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wanted = service.add_task("tests.handlers.Succeed", {"invoice": "INV-2026-0042"})
    service.add_task("tests.handlers.Succeed", {"invoice": "INV-2026-0043"})

    # A value inside the data finds its task, with the other filters still applying
    code = main(["--database-url", database_url, "list", "--search", "inv-2026-0042", "--json"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert [task["id"] for task in json.loads(out)["tasks"]] == [wanted]
    assert (
        main(["--database-url", database_url, "list", "--search", "0042", "--status", "error"]) == 0
    )
    assert str(wanted) not in capsys.readouterr().out

    # Text no column can hold is refused with the reason, as one error line
    code = main(["--database-url", database_url, "list", "--search", "x" * 10_240])
    out, err = capsys.readouterr()
    assert code != 0
    assert err.startswith("error: search is 10240 characters long: at most 200")

    # A search the window bounded says so beside the list
    monkeypatch.setattr(search, "SEARCH_WINDOW", 1)
    assert main(["--database-url", database_url, "list", "--search", "in"]) == 0
    assert "note: the search looked at the newest 1 tasks only" in capsys.readouterr().err


@pytest.mark.postgresql
def test_an_index_built_beforehand_as_operations_md_shows_is_kept(
    postgresql_empty_url: str,
) -> None:
    # Given a database at 0011 and the index built by the SQL of docs/operations.md
    upgrade_database(postgresql_empty_url, "0011")
    operations = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    section = operations[operations.index("**Revision `0012` on a large PostgreSQL table.**") :]
    statements = section.split("```sql\n", 1)[1].split("```", 1)[0]
    engine = create_engine(postgresql_empty_url)
    try:
        with engine.connect() as connection:
            autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
            for statement in statements.split(";"):
                if statement.strip():
                    autocommit.execute(text(statement))
    finally:
        engine.dispose()

    # When the upgrade runs, it keeps that index, and the search uses it
    upgrade_database(postgresql_empty_url)
    assert schema_differences(postgresql_empty_url) == []
    database = Database(postgresql_empty_url)
    try:
        with database.transaction() as connection:
            connection.execute(text("SET LOCAL enable_seqscan = off"))
            plan = "\n".join(connection.execute(text(EXPLAIN_SEARCH)).scalars())
        assert search.SEARCH_INDEX in plan
    finally:
        database.close()


@pytest.mark.parametrize(
    ("status", "index"),
    [("cancelled", "ix_TaskQueue_cancelled"), ("never-run", "ix_TaskQueue_LastStatus_Id")],
)
def test_the_derived_status_filters_read_an_index(
    database: Database, status: str, index: str
) -> None:
    query = (
        select(TaskQueue.id)
        .where(*filter_conditions(TaskFilter(parse_status(status))))
        .order_by(TaskQueue.id.desc())
        .limit(51)
    )
    statement = str(query.compile(database.engine, compile_kwargs={"literal_binds": True}))
    with database.transaction() as connection:
        if database.dialect == "postgresql":
            connection.execute(text("SET LOCAL enable_seqscan = off"))
            rows = [str(row[0]) for row in connection.execute(text(f"EXPLAIN {statement}"))]
        else:
            rows = [
                str(row[3]) for row in connection.execute(text(f"EXPLAIN QUERY PLAN {statement}"))
            ]
        plan = "\n".join(rows)
    assert index in plan
