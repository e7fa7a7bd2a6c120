"""The row limits of a report's top-N sections.

Apart from :mod:`celery_taskq.reports` so that the command line can declare its ``--limit``
option without importing the reports (and their SQL) into every process, runners included.
"""

from __future__ import annotations

DEFAULT_LIMIT = 10
"""Rows of the top-N sections (slowest runs, recent failures, dead letters, runners)."""

MAX_LIMIT = 1000
"""Most rows a top-N section may hold."""
