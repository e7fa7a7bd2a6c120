"""The task list page's search, sort, status chips and time ranges, read from the request.

The query itself is :func:`celery_taskq.reports.search.find_tasks`; this module turns request
text into a :class:`~celery_taskq.reports.search.TaskQuery` and builds the links the page
shows (column headers that sort, chips that filter), each keeping the rest of the request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from celery_taskq import reports
from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.listing import STATUS_FILTERS
from celery_taskq.reports.search import (
    SORT_COLUMNS,
    FoundPage,
    TaskQuery,
    find_tasks,
    parse_search,
)
from celery_taskq.reports.shown import shown_task
from celery_taskq.web import inputs
from celery_taskq.web.state import WebState

TIME_RANGES = ("1h", "6h", "24h", "7d", "30d")
"""The ranges the time-range picker offers (queued within the last ...)."""

SORTABLE_HEADERS = {
    "id": "id",
    "handler": "handler",
    "status": "last status",
    "queued": "queued",
    "queued_by": "queued by",
}
"""The table's sortable columns and their headers (the sort names of ``SORT_COLUMNS``)."""


@dataclass(frozen=True)
class ListView:
    """What the task list shows: the page found, the controls' state and their links."""

    page: FoundPage
    search: str
    sort: str
    order: str
    error: str | None
    newest: dict[str, str]
    older: dict[str, str] | None
    sort_links: dict[str, dict[str, str]] = field(default_factory=dict)
    chip_links: dict[str, dict[str, str]] = field(default_factory=dict)

    def context(self) -> dict[str, Any]:
        """The template's variables for these."""
        return {
            "page": self.page,
            "search": self.search,
            "sort": self.sort,
            "order": self.order,
            "error": self.error,
            "newest": self.newest,
            "older": self.older,
            "sort_headers": SORTABLE_HEADERS,
            "sort_links": self.sort_links,
            "status_chips": STATUS_FILTERS,
            "chip_links": self.chip_links,
            "time_ranges": TIME_RANGES,
        }


def task_list_view(
    state: WebState,
    filters: dict[str, str],
    *,
    search: str | None,
    sort: str | None,
    order: str | None,
    offset: str | None,
    before_id: str | None,
    limit: int,
    default_limit: int,
) -> ListView:
    """Read the request's list controls, run the query and build the page's links.

    A wrong value leaves the page empty with the reason (``error``), never a half-applied query.
    """
    sort_name = (sort or "").strip() or "id"
    order_name = (order or "").strip() or ("desc" if sort_name in ("id", "queued") else "asc")
    search_text = (search or "").strip()
    controls = {"q": search_text, "sort": sort_name, "order": order_name}
    kept = {name: value for name, value in {**filters, **controls}.items() if value}
    if sort_name == "id" and order_name == "desc":
        kept.pop("sort")
        kept.pop("order")
    if limit != default_limit:
        kept["limit"] = str(limit)
    error = None
    page = FoundPage((), None, None)
    try:
        query = TaskQuery(
            task_filter=inputs.task_filter(now=reports.utc_now(), **filters),
            search=parse_search(search_text),
            sort=sort_name,
            order=order_name,
            limit=limit,
            before_id=inputs.cursor(before_id),
            offset=_offset(offset),
        )
        found = find_tasks(state.database, query)
        page = dataclasses.replace(found, tasks=tuple(shown_task(task) for task in found.tasks))
    except InvalidArgumentError as exc:
        error = str(exc)
    older = None
    if page.next_before_id is not None:
        older = {**kept, "before_id": str(page.next_before_id)}
    elif page.next_offset is not None:
        older = {**kept, "offset": str(page.next_offset)}
    return ListView(
        page=page,
        search=search_text,
        sort=sort_name,
        order=order_name,
        error=error,
        newest=kept,
        older=older,
        sort_links={name: _sort_link(kept, name, sort_name, order_name) for name in SORT_COLUMNS},
        chip_links={status: _link(kept, status=status) for status in ("", *STATUS_FILTERS)},
    )


def _offset(value: str | None) -> int:
    """The ``offset`` of a sorted page: a whole number (its range is the query's to check)."""
    if value is None or not value.strip():
        return 0
    try:
        return int(value)
    except ValueError:
        raise InvalidArgumentError("offset must be a whole number") from None


def _link(kept: dict[str, str], **changes: str) -> dict[str, str]:
    """The page's query with ``changes`` (a blank value drops its field), from the first page."""
    return {name: value for name, value in {**kept, **changes}.items() if value}


def _sort_link(kept: dict[str, str], name: str, sort: str, order: str) -> dict[str, str]:
    """The query of a column header: sort by it, or reverse it when it is the sort already."""
    if name == sort:
        flipped = "asc" if order == "desc" else "desc"
    else:
        flipped = "desc" if name in ("id", "queued") else "asc"
    return {**kept, "sort": name, "order": flipped}
