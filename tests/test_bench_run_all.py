"""benchmarks/run_all.py's command line and report, without running a benchmark: every
PostgreSQL target is judged once per durability with issue 19's bounds, PgQueuer is compared
when measured and named as skipped (with how to install it) when not, and a batched runner
mode is measured beside the strict one when its environment is given."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime

import pytest

from benchmarks import bench_pgqueuer, bench_prune, run_all
from benchmarks.bench_drain import Config, Sample
from benchmarks.native_audit_report import Run
from benchmarks.native_audit_report import Sample as NativeSample
from benchmarks.run_all_report import report
from benchmarks.run_all_results import Results, key
from benchmarks.run_all_targets import Target, targets


def drained(enqueue: float, drain: float, p50_ms: float = 3.0, rss: float = 50.0) -> list[Sample]:
    """Three repetitions with these medians."""
    latencies = [p50_ms / 1000] * 5
    return [Sample(enqueue, drain * f, 1.0, latencies, rss) for f in (0.9, 1.0, 1.1)]


def results(*, pgqueuer: bool = True, batched: bool = False) -> Results:
    """A run where the handler drain is 2.5x plain Celery's on both PostgreSQLs."""
    measured = Results(tick_due=1000, standalone_rss_mb=[55.0, 58.0, 56.0])
    measured.drains["plain"] = drained(1000, 400, p50_ms=3.5, rss=50.0)
    measured.drains["sqlite"] = drained(2000, 800, p50_ms=40.0)
    for durability in ("no-durability", "durable"):
        measured.drains[key("postgresql", durability)] = drained(2500, 1000, rss=70.0)
        measured.enqueue_many[key("postgresql", durability)] = [31_000.0, 29_000.0, 30_500.0]
        measured.ticks[durability] = {10_000: [20.0] * 7, 1_000_000: [25.0] * 7}
        measured.idle_ticks[durability] = [6.0] * 7
        measured.server_settings[durability] = f"fsync={'on' if durability == 'durable' else 'off'}"
        if pgqueuer:
            measured.drains[key("pgqueuer", durability)] = drained(900, 800)
        if batched:
            measured.drains[key("postgresql-batched", durability)] = drained(2500, 1300)
    if pgqueuer:
        measured.pgqueuer = {"version": "pgqueuer 9.9", "dequeue": "batches of 10"}
    else:
        measured.pgqueuer_skipped = "pgqueuer not installed; to measure PgQueuer: pip install x"
    if batched:
        measured.batched_env = {"TASKQ_RUNNER_MODE": "batched"}
    return measured


def by_name(rows: list[Target]) -> dict[str, Target]:
    return {row.name: row for row in rows}


def test_each_postgresql_target_is_judged_on_each_durability_with_its_own_bound() -> None:
    rows = by_name(targets(results()))
    fast = rows["handler drain vs plain Celery + Redis, no-durability PostgreSQL"]
    durable = rows["handler drain vs plain Celery + Redis, durable PostgreSQL"]
    assert (fast.bound, fast.met) == (">= 3x", False)  # 2.5x
    assert (durable.bound, durable.met) == (">= 2x", True)
    assert durable.measured.startswith("2.50x")
    for durability in ("no-durability", "durable"):
        on = f"{durability} PostgreSQL"
        assert rows[f"handler drain vs PgQueuer, same {on}"].met is True  # 1,000 vs 800
        assert rows[f"`enqueue()` vs `.delay()` (Redis), {on}"].met is True  # 2.5x
        assert rows[f"`enqueue_many()` (batches of 1,000), {on}"].met is True  # 30,500
        assert rows[f"latency p50, {on} + Redis"].met is True
        assert rows[f"OnProcess tick at 1,000,000 rows, 1,000 due, {on}"].met is True
        idle = rows[f"OnProcess tick at 1,000,000 rows, nothing due, {on}"]
        assert (idle.bound, idle.met) == ("<= 5 ms", False)
    native = rows["audited native Celery tasks drain vs plain Celery, durable PostgreSQL"]
    assert (native.met, native.measured.split(" (")[0]) == (None, "not measured")
    assert rows["standalone `celery-taskq runner` RSS after 500 runs"].met is True  # 56 MB
    pool = rows["Celery pool process that ran handler runs, RSS vs plain Celery's pool process"]
    assert (pool.met, pool.measured) == (False, "70.0 MB vs 50.0 MB (+20.0 MB)")


def test_a_missing_pgqueuer_is_reported_not_judged() -> None:
    measured = results(pgqueuer=False)
    rows = by_name(targets(measured))
    row = rows["handler drain vs PgQueuer, same durable PostgreSQL"]
    assert row.met is None
    assert "pip install" in row.measured
    text = render(measured)
    assert "PgQueuer: not measured (pgqueuer not installed" in text
    assert "| handler drain vs PgQueuer, same durable PostgreSQL |" in text


def test_the_report_labels_both_durabilities_and_records_pgqueuer() -> None:
    text = render(results())
    assert "**durable** (`SHOW`: fsync=on)" in text
    assert "**no-durability** (`SHOW`: fsync=off)" in text
    assert "PgQueuer: version: pgqueuer 9.9; dequeue: batches of 10" in text
    assert "| PgQueuer (its own worker, batched dequeue), durable PostgreSQL | 900 | 800 |" in text
    assert "| celery_taskq handler runs + Redis, no-durability PostgreSQL |" in text
    assert "| durable | 1,000,000 | 0 | 6.0 | 6.0 |" in text  # the idle tick


def test_a_batched_mode_is_measured_beside_the_strict_one_and_judged_at_its_best() -> None:
    measured = results(batched=True)
    rows = by_name(targets(measured))
    row = rows["handler drain vs plain Celery + Redis, no-durability PostgreSQL"]
    assert row.measured.startswith("3.25x (batched (strict 1,000, batched 1,300 jobs/s)")
    assert row.met is True
    enqueue = rows["`enqueue()` vs `.delay()` (Redis), durable PostgreSQL"]
    assert enqueue.measured == "2.50x (2,500 vs 1,000 /s; 6 runs)"  # both modes' runs
    latency = rows["latency p50, durable PostgreSQL + Redis"]
    assert latency.measured.startswith("3.0 ms (strict 3.0 ms, batched 3.0 ms; plain Celery")
    measured.drains[key("postgresql-batched", "durable")] = drained(2500, 1300, p50_ms=12.0)
    latency = by_name(targets(measured))["latency p50, durable PostgreSQL + Redis"]
    assert (latency.measured[:7], latency.met) == ("12.0 ms", False)  # the fast mode's
    assert "batched, the fast mode (`TASKQ_RUNNER_MODE=batched`: batched claims" in render(measured)


def test_the_native_audit_and_pruning_rows_come_from_their_sections() -> None:
    measured = results()
    run = Run(tasks=100, repeat=1, concurrency=2)
    drains = {"plain": 500, "audited": 450, "plain-flower": 400, "audited-flower": 260}
    for variant, drain in drains.items():
        run.samples[("durable", variant)] = [NativeSample(1000, drain, None, None)]
    measured.native_audit = run
    prune = bench_prune.Measured()
    prune.drains = {
        "without": [bench_prune.Drain(1000, 10), bench_prune.Drain(1000, 10)],
        "on_process": [bench_prune.Drain(900, 10), bench_prune.Drain(850, 10)],
        "command": [bench_prune.Drain(700, 10), bench_prune.Drain(750, 10)],
    }
    measured.prune = {"durable": prune}
    rows = by_name(targets(measured))
    native = rows["audited native Celery tasks drain vs plain Celery, durable PostgreSQL"]
    assert native.met is True  # 0.90x
    assert native.measured.startswith(
        "0.90x with install()'s defaults; while Flower watches 0.52x "
        "(vs plain Celery while Flower watches 0.65x);"
    )
    pruning = rows["drain with pruning vs without, durable PostgreSQL (bench_prune.py)"]
    assert pruning.measured == "OnProcess pruning 0.88x; `celery-taskq prune` 0.72x"
    assert pruning.met is False


def test_the_command_line_adds_the_batched_system_with_its_environment() -> None:
    args = run_all.parse_args(["--quick", "--batched-env", "TASKQ_A=1,TASKQ_B=x"])
    assert args.batched_env == {"TASKQ_A": "1", "TASKQ_B": "x"}
    assert args.systems[:3] == ["plain", "postgresql", "postgresql-batched"]
    default = run_all.parse_args([])
    assert default.batched_env == run_all.BATCHED_ENV
    assert default.systems == ["plain", "postgresql", "postgresql-batched", "pgqueuer", "sqlite"]
    assert run_all.parse_args(["--batched-env", ""]).systems == [
        "plain",
        "postgresql",
        "pgqueuer",
        "sqlite",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["--batched-env", "TASKQ_A"],
        ["--systems", "postgresql-batched", "--batched-env", ""],
        ["--systems", "rabbit"],
        ["--tick-sizes", "10k"],
        ["--pgqueuer-batch-size", "0"],
    ],
)
def test_the_command_line_refuses_bad_input(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        run_all.parse_args(argv)
    assert exited.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_pgqueuer_missing_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "asyncpg" else object()
    )
    reason = bench_pgqueuer.missing()
    assert reason is not None
    assert reason.startswith("asyncpg not installed")
    assert "pip install -e '.[bench]'" in reason


def render(measured: Results) -> str:
    """RESULTS.md for ``measured``."""
    args = run_all.parse_args(["--quick"])
    config = Config(1000, 3, 2, 20, False, run_all.PROJECT_ROOT)
    return report(args, config, measured, {"CPU": "test"}, datetime(2026, 1, 1, tzinfo=UTC), 60.0)
