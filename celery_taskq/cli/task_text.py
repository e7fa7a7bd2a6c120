"""Plain-text rendering of snapshots for the command line."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery_taskq.cli.errors import one_line
from celery_taskq.core.listing import TaskPage
from celery_taskq.core.models import RunStatus
from celery_taskq.core.snapshots import RelatedTask, RunSnapshot, TaskSnapshot
from celery_taskq.reports.last_runs import LastRun
from celery_taskq.reports.links import dashboard_task_url, flower_celery_task_url, flower_task_url
from celery_taskq.reports.terminal import escape_controls


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def _block(title: str, text: str | None) -> list[str]:
    if not text:
        return []
    # Lines split at line feeds only (a carriage return is shown escaped), tabs laid out.
    lines = text.rstrip("\n").replace("\r\n", "\n").split("\n")
    return [f"    {title}:", *("      " + line.expandtabs() for line in lines)]


def render_run(run: RunSnapshot) -> list[str]:
    """Lines describing one run."""
    native = ""
    if run.attempt is not None:
        native += f"  attempt {run.attempt}"
    if run.eager:
        native += "  eager"
    lines = [
        f"  run {run.id}: {run.status.value}  {run.percents_completed}%  "
        f"started {_time(run.started_on)}  finished {_time(run.finished_on)}  "
        f"runner {run.task_runner_id if run.task_runner_id is not None else '-'}{native}"
    ]
    if run.celery_task_id:
        lines.append(f"    celery task id: {run.celery_task_id}")
    if run.progress_step is not None or run.progress_status:
        lines.append(f"    progress: {progress_text(run)}")
    if run.error_code or run.error_message:
        lines.append(f"    error: [{run.error_code or '-'}] {run.error_message or ''}")
    lines += _step_lines(run.results)
    if run.results is not None:
        lines.append(f"    results: {json.dumps(run.results, sort_keys=True)}")
    if run.checkpoint is not None and not _checkpoint_in_results(run):
        lines.append(f"    checkpoint: {json.dumps(run.checkpoint, sort_keys=True)}")
    lines += _block("stdout", run.standard_output)
    lines += _block("stderr", run.error_output)
    return lines


def _checkpoint_in_results(run: RunSnapshot) -> bool:
    """Whether a multi-step run's checkpoint only repeats its step results."""
    results = run.results
    return (
        isinstance(results, dict)
        and isinstance(run.checkpoint, dict)
        and run.checkpoint.get("steps") == results.get("steps")
    )


def _step_lines(results: Any) -> list[str]:
    """One line per step of a multi-step run's results (see :mod:`celery_taskq.core.steps`)."""
    steps = results.get("steps") if isinstance(results, dict) else None
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        return []
    lines = []
    for step in steps:
        label = step.get("title") or step.get("handler") or "?"
        line = f"    step {step.get('step', '?')}: {step.get('status', '?')!s:<8} {label}"
        if step.get("status") == "error":
            line += f"  [{step.get('error_code') or '-'}] {step.get('error_message') or ''}"
        lines.append(line)
    return lines


RELATION_LABELS = {
    "parent": "parent",
    "root": "root",
    "group": "group",
    "chord": "chord callback",
    "resent_from": "re-sends",
}
"""How ``show`` names each relation of a native Celery task."""


def relation_lines(task: TaskSnapshot, relations: tuple[RelatedTask, ...]) -> list[str]:
    """The task's Celery id (``-`` for a handler task: each run shows its own) and a native
    task's relations, each with the task that holds the id."""
    lines = [f"  celery task id: {task.celery_task_id or '-'}"]
    for relation in relations:
        found = "no task" if relation.task_id is None else f"task {relation.task_id}"
        if relation.relation == "resent_from":
            lines.append(
                f"  {RELATION_LABELS[relation.relation]}: task {relation.value}"
                + ("" if relation.task_id is not None else " (no longer stored)")
            )
        else:
            lines.append(f"  {RELATION_LABELS[relation.relation]}: {relation.value} ({found})")
    return lines


@dataclass(frozen=True)
class Links:
    """The base URLs ``show`` links to (empty: not configured, no link)."""

    dashboard_url: str = ""
    flower_url: str = ""

    def of_task(self, task: TaskSnapshot) -> dict[str, str | None]:
        """The task's page on the dashboard, and a native task's page on Flower."""
        return {
            "dashboard": dashboard_task_url(self.dashboard_url, task.id),
            "flower": flower_celery_task_url(self.flower_url, task.celery_task_id),
        }


def render_task(
    task: TaskSnapshot, relations: tuple[RelatedTask, ...] = (), links: Links | None = None
) -> str:
    """A task, its relations, its links (those configured) and all its runs, oldest run first;
    stored text is shown escaped (:func:`~celery_taskq.reports.terminal.escape_controls`)."""
    links = links or Links()
    lines = [
        f"task {task.id}: {task.task_handler_class}",
        f"  data: {json.dumps(task.task_data, sort_keys=True)}",
        f"  queued {_time(task.queued_on)} by {task.queued_by_id or '-'}; "
        f"scheduled {_time(task.scheduled_on)}",
        f"  last status: {task.last_status.value if task.last_status else '-'}; "
        f"failed runs: {task.task_runs_failed}/{task.max_retries}",
        f"  queue: {task.queue}; priority: {task.priority}",
        *relation_lines(task, relations),
        *(f"  {name}: {url}" for name, url in links.of_task(task).items() if url),
        f"  runs: {len(task.runs)}",
    ]
    for run in task.runs:
        lines += render_run(run)
        if url := flower_task_url(links.flower_url, run):
            lines.append(f"    flower: {url}")
    return "\n".join(escape_controls(line) for line in lines)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def render_task_json(
    task: TaskSnapshot, relations: tuple[RelatedTask, ...] = (), links: Links | None = None
) -> str:
    """A task, its relations, its links and its runs as one JSON document (keys as the HTTP
    API's; ``links`` and each run's ``flower_task_url`` are ``null`` where not configured)."""
    links = links or Links()
    document = {
        "id": task.id,
        "handler": task.task_handler_class,
        "title": task.title,
        "data": task.task_data,
        "scheduled_on": _iso(task.scheduled_on),
        "queued_on": _iso(task.queued_on),
        "queued_by": task.queued_by_id,
        "last_status": task.last_status.value if task.last_status else None,
        "max_retries": task.max_retries,
        "task_runs_failed": task.task_runs_failed,
        "unique_key": task.unique_key,
        "cancel_requested_on": _iso(task.cancel_requested_on),
        "celery_task_id": task.celery_task_id,
        "celery_parent_id": task.celery_parent_id,
        "celery_root_id": task.celery_root_id,
        "celery_group_id": task.celery_group_id,
        "celery_chord_id": task.celery_chord_id,
        "resent_from_id": task.resent_from_id,
        "queue": task.queue,
        "priority": task.priority,
        "relations": [
            {"relation": item.relation, "value": item.value, "task_id": item.task_id}
            for item in relations
        ],
        "links": links.of_task(task),
        "runs": [
            {
                "id": run.id,
                "task_id": run.task_queue_id,
                "status": run.status.value,
                "started_on": _iso(run.started_on),
                "finished_on": _iso(run.finished_on),
                "percents_completed": run.percents_completed,
                "progress_step": run.progress_step,
                "progress_steps": run.progress_steps,
                "progress_status": run.progress_status,
                "results": run.results,
                "checkpoint": run.checkpoint,
                "standard_output": run.standard_output,
                "error_output": run.error_output,
                "error_code": run.error_code,
                "error_message": run.error_message,
                "task_runner_id": run.task_runner_id,
                "celery_task_id": run.celery_task_id,
                "attempt": run.attempt,
                "eager": run.eager,
                "flower_task_url": flower_task_url(links.flower_url, run),
            }
            for run in task.runs
        ],
    }
    return json.dumps(document, sort_keys=True)


def _duration(last: LastRun | None, now: datetime) -> float | None:
    return None if last is None else last.seconds(now)


def _duration_text(last: LastRun | None, now: datetime) -> str:
    seconds = _duration(last, now)
    if seconds is None or last is None:
        return "-"
    return f"{seconds:.3f}" + ("+" if last.status is RunStatus.RUNNING else "")


def render_page(
    page: TaskPage, last: Mapping[int, LastRun] | None = None, now: datetime | None = None
) -> str:
    """A page of tasks as an aligned table, with the cursor of the next page.

    ``DURATION`` is the seconds of each task's latest run (``last``), a running one's so far
    marked ``+``; ``-`` when it has not started.
    """
    last = last or {}
    now = now or datetime.now(UTC)
    header = ("ID", "STATUS", "FAILED", "HANDLER", "TITLE", "QUEUED", "DURATION", "BY")
    rows = [
        (
            str(task.id),
            task.last_status.value if task.last_status else "-",
            f"{task.task_runs_failed}/{task.max_retries}",
            escape_controls(task.task_handler_class),
            escape_controls(one_line(task.title)) if task.title else "-",
            _time(task.queued_on),
            _duration_text(last.get(task.id), now),
            escape_controls(task.queued_by_id or "-"),
        )
        for task in page.tasks
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    if page.next_before_id is not None:
        lines.append(f"more: --before {page.next_before_id}")
    return "\n".join(lines)


def render_page_json(
    page: TaskPage, last: Mapping[int, LastRun] | None = None, now: datetime | None = None
) -> str:
    """A page of tasks as one JSON document (``duration``: as the table's, ``null`` when the
    latest run has not started; ``duration_running``: whether it is still running)."""
    last = last or {}
    now = now or datetime.now(UTC)
    return json.dumps(
        {
            "tasks": [
                {
                    "id": task.id,
                    "handler": task.task_handler_class,
                    "title": task.title,
                    "data": task.task_data,
                    "last_status": task.last_status.value if task.last_status else None,
                    "task_runs_failed": task.task_runs_failed,
                    "max_retries": task.max_retries,
                    "queued_on": task.queued_on.isoformat(),
                    "scheduled_on": task.scheduled_on.isoformat(),
                    "queued_by": task.queued_by_id,
                    "cancel_requested_on": _iso(task.cancel_requested_on),
                    "duration": _duration(last.get(task.id), now),
                    "duration_running": (
                        task.id in last and last[task.id].status is RunStatus.RUNNING
                    ),
                }
                for task in page.tasks
            ],
            "next_before_id": page.next_before_id,
        },
        sort_keys=True,
    )


def progress_text(run: RunSnapshot) -> str:
    """``step 2/5  rendering``-style text of a run's progress details."""
    parts = []
    if run.progress_step is not None:
        total = "" if run.progress_steps is None else f"/{run.progress_steps}"
        parts.append(f"step {run.progress_step}{total}")
    if run.progress_status:
        parts.append(run.progress_status)
    return "  ".join(parts)


PROGRESS_BAR_WIDTH = 30


def progress_bar(run: RunSnapshot) -> str:
    """One terminal line: a bar, the percentage, the run's status and progress details."""
    filled = run.percents_completed * PROGRESS_BAR_WIDTH // 100
    bar = "#" * filled + "-" * (PROGRESS_BAR_WIDTH - filled)
    details = progress_text(run)
    line = f"[{bar}] {run.percents_completed:3d}%  {run.status.value}" + (
        f"  {details}" if details else ""
    )
    return escape_controls(line)
