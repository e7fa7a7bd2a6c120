"""How the suite shares the machine when it runs on two xdist workers (``-n 2``).

Tests that start servers, Celery workers, beats, runners or browsers wait on what they start and
time it out: they all make one scope, which one worker runs one test at a time, as a serial run
would. The modules listed in :data:`PARALLEL_MODULES` start nothing that a test times
(statements, unit tests, in-process web clients, property tests): each is a scope of its own,
run beside them on the other worker (a module on one worker, so its module-scoped fixtures are
set up once). A module not listed joins the serial scope: a new module is safe by default and
is listed here once it is known to be.

The scopes are given to xdist through its scheduler hook (``pytest_xdist_make_scheduler``),
not ``xdist_group`` marks: xdist's ``loadgroup`` renames node ids, which pytest 9 no longer
lets it do.
"""

from __future__ import annotations

from typing import Any

from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

SERIAL_SCOPE = "processes"

PARALLEL_MODULES = frozenset(
    {
        "tests/test_api.py",
        "tests/test_audit_unit.py",
        "tests/test_backoff.py",
        "tests/test_beat_link.py",
        "tests/test_bench_native_audit.py",
        "tests/test_bench_run_all.py",
        "tests/test_broker.py",
        "tests/test_cli.py",
        "tests/test_cli_parity.py",
        "tests/test_compose.py",
        "tests/test_docs_settings.py",
        "tests/test_enqueue_many.py",
        "tests/test_fuzz_intake.py",
        "tests/test_handlers.py",
        "tests/test_health.py",
        "tests/test_install.py",
        "tests/test_layers.py",
        "tests/test_limits.py",
        "tests/test_listing.py",
        "tests/test_native_attempts.py",
        "tests/test_native_output.py",
        "tests/test_native_read.py",
        "tests/test_prune.py",
        "tests/test_prune_cli.py",
        "tests/test_queue.py",
        "tests/test_queues.py",
        "tests/test_queues_celery.py",
        "tests/test_redact.py",
        "tests/test_registry.py",
        "tests/test_reports.py",
        "tests/test_reports_insight.py",
        "tests/test_reports_series.py",
        "tests/test_resend.py",
        "tests/test_resumable.py",
        "tests/test_runner.py",
        "tests/test_runner_demand.py",
        "tests/test_schedules.py",
        "tests/test_schedules_config.py",
        "tests/test_schedules_web.py",
        "tests/test_schema.py",
        "tests/test_search.py",
        "tests/test_search_web.py",
        "tests/test_security.py",
        "tests/test_settings.py",
        "tests/test_steps.py",
        "tests/test_stored_values_property.py",
        "tests/test_suite_scheduling.py",
        "tests/test_task_data_limits.py",
        "tests/test_tick.py",
        "tests/test_web_api.py",
        "tests/test_web_bulk.py",
        "tests/test_web_live.py",
        "tests/test_web_charts.py",
        "tests/test_web_csrf.py",
        "tests/test_web_fuzz.py",
        "tests/test_web_insight.py",
        "tests/test_web_task_page.py",
    }
)


def scope_of(nodeid: str) -> str:
    """The scope of a test: its module if it may run beside others, else the serial scope."""
    module = nodeid.split("::", 1)[0]
    return module if module in PARALLEL_MODULES else SERIAL_SCOPE


class SuiteScheduling(LoadScopeScheduling):  # type: ignore[misc]
    """xdist's scope scheduling, with the scopes of :func:`scope_of`."""

    def _split_scope(self, nodeid: str) -> str:
        return scope_of(nodeid)


def make_scheduler(config: Any, log: Any) -> SuiteScheduling:
    """The scheduler of a distributed run (``pytest_xdist_make_scheduler``)."""
    return SuiteScheduling(config, log)
