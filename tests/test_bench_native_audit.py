"""benchmarks/bench_native_audit.py's report, without running the benchmark: the section it
writes into RESULTS.md judges each target from the medians, and replaces itself on a rerun."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from benchmarks.native_audit_report import BEGIN, END, Run, Sample, WriterStats, report
from benchmarks.native_audit_report import write_section as write_report_section


def sample(delay: float, drain: float) -> Sample:
    """A measured variant with these rates."""
    writer = WriterStats(written=200, transactions=4, write_seconds=0.1, failures=0)
    return Sample(delay, drain, 0.1, (100, 100), 2.0, 0.5, writer, writer)


def measured() -> Run:
    """Three repetitions of each variant on the no-durability cluster."""
    run = Run(tasks=100, repeat=3, concurrency=2, load=[(1.0, 1.0, 1.0)])
    rates = {
        "plain": [(1000, 500), (900, 400), (1100, 600)],
        "audited": [(850, 420), (800, 380), (900, 450)],  # medians 850/420: 0.85x, 0.84x
        "audited-flower": [(300, 300), (310, 310), (290, 290)],  # drain 300: 0.60x
    }
    for variant, values in rates.items():
        run.samples[("no-durability", variant)] = [sample(d, r) for d, r in values]
    return run


def render() -> str:
    """The section for :func:`measured`."""
    seen = {"no-durability": "fsync=off, synchronous_commit=off"}
    facts = {"Celery": "5.7.0", "CPU": "test", "cores (logical / usable)": "2 / 2"}
    return report(measured(), facts, seen, "bench", datetime(2026, 1, 1, tzinfo=UTC), 60.0)


def test_the_targets_are_judged_on_the_medians() -> None:
    section = render()
    assert section.startswith(BEGIN)
    assert section.rstrip().endswith(END)
    assert (
        "| audited (install()'s defaults: the app's Celery settings unchanged) drain vs plain "
        "| no-durability | 0.84x (420 vs 500 tasks/s) | >= 0.8x | yes |"
    ) in section
    assert (
        "| audited-flower (while Flower watches: worker task events on) drain vs plain "
        "| no-durability | 0.60x (300 vs 500 tasks/s) "
        "| >= 0.7x | **no** |"
    ) in section
    assert "| audited `.delay()` vs plain | no-durability | 0.85x" in section
    assert "| 100 / 100 |" in section  # every task audited
    assert "| no-durability | audited | 2.00 | 0.50 | 50.0 | 0.500 |" in section


def test_a_rerun_replaces_its_section_and_keeps_the_rest(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nother figures\n")
    write_report_section(results, render())
    write_report_section(results, render().replace("0.84x", "0.99x"))
    text = results.read_text()
    assert text.startswith("# Results\n\nother figures\n\n" + BEGIN)
    assert text.count(BEGIN) == 1
    assert "0.99x" in text
    assert "0.84x" not in text
