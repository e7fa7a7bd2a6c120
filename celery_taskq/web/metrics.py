"""Prometheus metrics at ``/metrics``, computed from the tables on every scrape.

A custom collector reads the report layer (no state is kept in the process, so every
dashboard replica reports the same numbers):

=======================================  =========  ==========================================
metric                                   type       what
=======================================  =========  ==========================================
``taskq_tasks{handler,status}``          gauge      tasks by ``LastStatus`` (``never_run``: no
                                                    run yet)
``taskq_runs{handler,status}``           gauge      runs by ``Status``
``taskq_run_duration_seconds{handler}``  histogram  ``FinishedOn - StartedOn`` of finished runs
                                                    (buckets :data:`DURATION_BUCKETS`)
``taskq_runners_live{role}``             gauge      runners in ``running`` status
``taskq_runners_timed_out_total{role}``  counter    runners found dead and reaped (``timeout``)
``taskq_due_runs``                       gauge      scheduled runs due now
``taskq_oldest_due_run_age_seconds``     gauge      how long the oldest due run has waited
``taskq_native_possibly_lost``           gauge      native tasks published and never started
                                                    ``native_lost_after`` seconds past due
``taskq_beat_tick_age_seconds{event}``   gauge      seconds since the periodic event's last
                                                    tick (``process``, ``create_runners``;
                                                    absent until the event first ticks)
``taskq_due_backlog_runs{queue}``        gauge      scheduled runs due now, per queue (queues
                                                    with due runs only)
``taskq_due_backlog_age_seconds{queue}`` gauge      how long the queue's oldest due run has
                                                    waited
``taskq_pruned_rows_total{kind}``        counter    rows deleted by pruning, ever: ``tasks``,
                                                    ``runs``, ``runners``, ``beat_ticks``,
                                                    ``schedule_slots``
=======================================  =========  ==========================================

Handler labels are shown as :func:`celery_taskq.reports.shown.shown_text` shows a ``varchar(255)``:
whatever a writer stored there, the exposition stays valid UTF-8 of bounded size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from celery_taskq import reports
from celery_taskq.core.models import RunnerRole, RunnerStatus, RunStatus
from celery_taskq.core.settings import DEFAULT_NATIVE_LOST_AFTER
from celery_taskq.core.storage.database import Database
from celery_taskq.reports import ReportWindow, backlog
from celery_taskq.reports.pruned import pruned_totals
from celery_taskq.reports.shown import SHOWN_SHORT_MAX_CHARS, shown_text
from celery_taskq.web.state import WebState, get_state

DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Upper bounds (seconds) of the run-duration histogram's buckets; ``+Inf`` follows."""

TASK_STATUSES = ("never_run", *(status.value for status in RunStatus))


class TaskqCollector(Collector):
    """Reads the tables on each :meth:`collect` (one scrape)."""

    def __init__(self, database: Database, lost_after: float = DEFAULT_NATIVE_LOST_AFTER) -> None:
        self.database = database
        self.lost_after = lost_after

    def collect(self) -> Iterator[Metric]:
        """The metric families of the module's table."""
        everything = ReportWindow()
        totals = reports.totals(self.database, everything)
        tasks = GaugeMetricFamily(
            "taskq_tasks",
            "Tasks by LastStatus (never_run: no run yet).",
            labels=["handler", "status"],
        )
        runs = GaugeMetricFamily("taskq_runs", "Runs by Status.", labels=["handler", "status"])
        for row in totals.by_handler:
            handler = _label(row.handler)
            for status in TASK_STATUSES:
                tasks.add_metric([handler, status], getattr(row.tasks, status))
            for status in RunStatus:
                runs.add_metric([handler, status.value], getattr(row.runs, status.value))
        yield tasks
        yield runs

        durations = HistogramMetricFamily(
            "taskq_run_duration_seconds",
            "Duration of finished runs (FinishedOn - StartedOn).",
            labels=["handler"],
        )
        for histogram in reports.duration_histograms(self.database, everything, DURATION_BUCKETS):
            buckets = [(repr(bound), float(count)) for bound, count in histogram.buckets]
            durations.add_metric(
                [_label(histogram.handler)],
                [*buckets, ("+Inf", float(histogram.count))],
                sum_value=histogram.sum,
            )
        yield durations

        live = GaugeMetricFamily(
            "taskq_runners_live", "Runners in running status.", labels=["role"]
        )
        timed_out = CounterMetricFamily(
            "taskq_runners_timed_out",
            "Runners found dead and reaped by the overseer (status timeout).",
            labels=["role"],
        )
        counted = {
            (row.role, row.status): row.runners for row in reports.runner_counts(self.database)
        }
        for role in RunnerRole:
            live.add_metric([role.value], counted.get((role, RunnerStatus.RUNNING), 0))
            timed_out.add_metric([role.value], counted.get((role, RunnerStatus.TIMEOUT), 0))
        yield live
        yield timed_out

        due = reports.due_work(self.database)
        yield GaugeMetricFamily(
            "taskq_due_runs", "Scheduled runs due now.", value=due.due_scheduled_runs
        )
        yield GaugeMetricFamily(
            "taskq_oldest_due_run_age_seconds",
            "Seconds the oldest due scheduled run has waited (0: none is due).",
            value=due.oldest_due_age or 0.0,
        )
        lost = reports.possibly_lost(self.database, lost_after=self.lost_after, limit=1)
        yield GaugeMetricFamily(
            "taskq_native_possibly_lost",
            "Native Celery tasks published and never started native_lost_after seconds past due.",
            value=lost.count,
        )
        yield from _liveness_metrics(self.database)
        yield _pruned_rows(self.database)


def _liveness_metrics(database: Database) -> Iterator[Metric]:
    """Beat-tick ages and the due backlog per queue (the alerts of docs/operations.md#health)."""
    ticks = GaugeMetricFamily(
        "taskq_beat_tick_age_seconds",
        "Seconds since the periodic event's last recorded beat tick.",
        labels=["event"],
    )
    for event, age in sorted(backlog.beat_tick_ages(database).items()):
        ticks.add_metric([event], age)
    yield ticks
    runs = GaugeMetricFamily(
        "taskq_due_backlog_runs", "Scheduled runs due now, per queue.", labels=["queue"]
    )
    ages = GaugeMetricFamily(
        "taskq_due_backlog_age_seconds",
        "Seconds the queue's oldest due scheduled run has waited.",
        labels=["queue"],
    )
    for queue in backlog.due_backlog(database):
        label = _label(queue.queue)
        runs.add_metric([label], queue.due_runs)
        ages.add_metric([label], queue.oldest_due_age)
    yield runs
    yield ages


def _pruned_rows(database: Database) -> Metric:
    """What pruning deleted, by kind (``TaskqPrunedRows``: every replica reads the same)."""
    pruned = CounterMetricFamily(
        "taskq_pruned_rows", "Rows deleted by pruning (retention), by kind.", labels=["kind"]
    )
    for total in pruned_totals(database):
        pruned.add_metric([_label(total.kind)], total.rows)
    return pruned


def _label(handler: str) -> str:
    return shown_text(handler, SHOWN_SHORT_MAX_CHARS)


def metrics_registry(
    database: Database, lost_after: float = DEFAULT_NATIVE_LOST_AFTER
) -> CollectorRegistry:
    """A registry holding only the tables' collector (no process metrics of this replica)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TaskqCollector(database, lost_after))
    return registry


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(state: Annotated[WebState, Depends(get_state)]) -> Response:
    """The Prometheus text exposition of :class:`TaskqCollector`."""
    return Response(
        generate_latest(metrics_registry(state.database, state.settings.native_lost_after)),
        media_type=CONTENT_TYPE_LATEST,
    )
