"""The task list with free-text search and sortable columns, one page at a time.

**Search** matches a piece of text, case-insensitively, anywhere in a task's title, handler,
queued-by, Celery task id or data (the JSON text of ``TaskData``). The text is bound as a
parameter and its LIKE wildcards (``%``, ``_``) and the escape character are escaped, so it
matches literally.

- On PostgreSQL with the trigram index of revision 0012 (``ix_TaskQueue_search``, which needs
  the ``pg_trgm`` extension), a search of at least :data:`MIN_INDEXED_LENGTH` characters
  covers every task through the index.
- Otherwise (SQLite, PostgreSQL without ``pg_trgm``, or shorter text) it scans a bounded
  window: the newest :data:`SEARCH_WINDOW` tasks. The page then says whether the window left
  older tasks out (:attr:`FoundPage.window_bounded`).

**Sort** is by one of :data:`SORT_COLUMNS` (each served by an index), ascending or descending,
with ``Id`` in the same direction as the tie-break, so that pages are stable. The default
order, newest first, pages by keyset (``before_id``); any other order pages by an offset of at
most :data:`MAX_OFFSET` rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, func, or_, select, text

from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.listing import MAX_PAGE_SIZE, TaskFilter, filter_conditions
from celery_taskq.core.models import TaskQueue
from celery_taskq.core.snapshots import TaskSummary
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.storable import text_problem

SEARCH_WINDOW = 10_000
"""How many of the newest tasks a search scans where no index serves it."""

MIN_INDEXED_LENGTH = 3
"""Shortest search the trigram index serves (a trigram is three characters)."""

MAX_SEARCH_LENGTH = 200
"""Longest search text accepted."""

MAX_OFFSET = 10_000
"""Deepest offset a sorted list pages to; filter or search to reach further."""

SEARCH_INDEX = "ix_TaskQueue_search"
"""The trigram index of revision 0012 (PostgreSQL with ``pg_trgm`` only)."""

SEARCH_TEXT_SQL = (
    "(COALESCE(\"Title\", '') || ' ' || \"TaskHandlerClass\" || ' '"
    " || COALESCE(\"QueuedById\", '') || ' ' || COALESCE(\"CeleryTaskId\", '')"
    " || ' ' || COALESCE(CAST(\"TaskData\" AS TEXT), ''))"
)
"""The text a search matches; the index of revision 0012 is built on this very expression."""

# PostgreSQL: ILIKE, which the trigram index serves. SQLite's LIKE ignores ASCII case.
_ILIKE_TEXT_SQL = f"{SEARCH_TEXT_SQL} ILIKE :search_text ESCAPE '\\'"
_ILIKE_JSON_SQL = f"{SEARCH_TEXT_SQL} ILIKE :search_json ESCAPE '\\'"
_LIKE_TEXT_SQL = f"{SEARCH_TEXT_SQL} LIKE :search_text ESCAPE '\\'"
_LIKE_JSON_SQL = f"{SEARCH_TEXT_SQL} LIKE :search_json ESCAPE '\\'"

SORT_COLUMNS: dict[str, Any] = {
    "id": TaskQueue.id,
    "queued": TaskQueue.queued_on,
    "handler": TaskQueue.task_handler_class,
    "status": TaskQueue.last_status,
    "queued_by": TaskQueue.queued_by_id,
}
"""The sortable columns by their names in requests; each has an index ending in ``Id`` or
alone, so a sorted page reads a few index entries. Blank values sort as the database places
NULLs (last ascending and first descending on PostgreSQL, the reverse on SQLite)."""

SORT_ORDERS = ("asc", "desc")


@dataclass(frozen=True)
class TaskQuery:
    """What to list: a filter, an optional search, an order and a page."""

    task_filter: TaskFilter = field(default_factory=TaskFilter)
    search: str | None = None
    sort: str = "id"
    order: str = "desc"
    limit: int = 50
    before_id: int | None = None
    """Keyset cursor of the default order (``id``, ``desc``)."""
    offset: int = 0
    """Rows to skip in any other order (at most :data:`MAX_OFFSET`)."""

    @property
    def keyset(self) -> bool:
        """Whether this order pages by keyset (newest first) rather than by offset."""
        return self.sort == "id" and self.order == "desc"


@dataclass(frozen=True)
class FoundPage:
    """One page of a task query and how to get the next."""

    tasks: tuple[TaskSummary, ...]
    next_before_id: int | None
    """The next page's keyset cursor (default order), ``None`` at the end."""
    next_offset: int | None
    """The next page's offset (other orders), ``None`` at the end or past :data:`MAX_OFFSET`."""
    window_bounded: bool = False
    """The search scanned only the newest :data:`SEARCH_WINDOW` tasks, and older ones exist."""
    window_size: int | None = None
    """How many of the newest tasks the search scanned, when the window bounded it."""


def parse_search(value: str | None) -> str | None:
    """Search text from input: blank means none; too long or unstorable text is refused."""
    if value is None or not value.strip():
        return None
    problem = text_problem(value)
    if problem is not None:
        raise InvalidArgumentError(f"search {problem}")
    text_value = value.strip()
    if len(text_value) > MAX_SEARCH_LENGTH:
        raise InvalidArgumentError(
            f"search is {len(text_value)} characters long: at most {MAX_SEARCH_LENGTH}"
        )
    return text_value


def like_pattern(search: str) -> str:
    """A LIKE pattern matching ``search`` literally anywhere (escape character ``\\``)."""
    escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def check_query(query: TaskQuery) -> None:
    """Refuse a query with an unknown sort, order, page size or offset."""
    if query.sort not in SORT_COLUMNS:
        raise InvalidArgumentError(
            f"unknown sort {query.sort!r}: use one of {', '.join(SORT_COLUMNS)}"
        )
    if query.order not in SORT_ORDERS:
        raise InvalidArgumentError(f"unknown order {query.order!r}: use asc or desc")
    limit = query.limit
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidArgumentError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
    if not 0 <= query.offset <= MAX_OFFSET:
        raise InvalidArgumentError(f"offset must be from 0 to {MAX_OFFSET}")
    if query.before_id is not None and not query.keyset:
        raise InvalidArgumentError("before_id pages the default order only: use offset")


def find_tasks(database: Database, query: TaskQuery) -> FoundPage:
    """A page of the tasks ``query`` asks for (see the module docstring for search and sort)."""
    check_query(query)
    search = parse_search(query.search)
    conditions = filter_conditions(query.task_filter)
    column = SORT_COLUMNS[query.sort]
    ordering = [column.desc(), TaskQueue.id.desc()]
    if query.order == "asc":
        ordering = [column.asc(), TaskQueue.id.asc()]
    if query.sort == "id":
        ordering = ordering[1:]
    statement = select(TaskQueue).order_by(*ordering).limit(query.limit + 1)
    if query.keyset:
        if query.before_id is not None:
            conditions.append(TaskQueue.id < query.before_id)
    else:
        statement = statement.offset(query.offset)
    window_bounded = False
    with database.read_session() as session:
        if database.dialect == "postgresql":
            # As for reports (sql.report_transaction): JIT compiling costs more than these
            # reads. A prepared search must be planned for its own text: a generic plan cannot
            # tell a word in every task (walk the newest ids) from one in a few (the index).
            session.execute(text("SET LOCAL jit = off"))
            session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
        if search is not None:
            conditions.append(_matches(search, database.dialect))
            if not _indexed(database, session.connection(), search):
                floor, window_bounded = _window_floor(session.connection())
                if floor is not None:
                    conditions.append(TaskQueue.id >= floor)
        rows = session.scalars(statement.where(*conditions)).all()
        tasks = tuple(TaskSummary.from_row(row) for row in rows[: query.limit])
    more = len(rows) > query.limit
    next_before_id = tasks[-1].id if more and query.keyset else None
    next_offset = None
    if more and not query.keyset and query.offset + query.limit <= MAX_OFFSET:
        next_offset = query.offset + query.limit
    window_size = SEARCH_WINDOW if window_bounded else None
    return FoundPage(tasks, next_before_id, next_offset, window_bounded, window_size)


def _matches(search: str, dialect: str) -> ColumnElement[bool]:
    # Inside TaskData's JSON text a quote, a backslash or a control character is escaped (and
    # on SQLite any non-ASCII character): the search also looks for that spelling of the text.
    in_json = json.dumps(search, ensure_ascii=dialect != "postgresql")[1:-1]
    postgresql = dialect == "postgresql"
    match: ColumnElement[bool] = and_(
        text(_ILIKE_TEXT_SQL if postgresql else _LIKE_TEXT_SQL).bindparams(
            bindparam("search_text", like_pattern(search))
        )
    )
    if in_json == search:
        return match
    match_json = text(_ILIKE_JSON_SQL if postgresql else _LIKE_JSON_SQL).bindparams(
        bindparam("search_json", like_pattern(in_json))
    )
    return or_(match, match_json)


def _indexed(database: Database, connection: Any, search: str) -> bool:
    if database.dialect != "postgresql" or len(search) < MIN_INDEXED_LENGTH:
        return False
    # to_regclass looks the name up on the search path, where the tables are.
    found = connection.execute(
        text("SELECT to_regclass(:name)"), {"name": f'"{SEARCH_INDEX}"'}
    ).scalar()
    return found is not None


def _window_floor(connection: Any) -> tuple[int | None, bool]:
    """The smallest id of the newest :data:`SEARCH_WINDOW` tasks (``None`` when the table holds
    fewer), and whether older tasks exist."""
    floor = connection.execute(
        select(TaskQueue.id).order_by(TaskQueue.id.desc()).offset(SEARCH_WINDOW - 1).limit(1)
    ).scalar()
    if floor is None:
        return None, False
    oldest = connection.execute(select(func.min(TaskQueue.id))).scalar()
    return int(floor), oldest is not None and int(oldest) < int(floor)
