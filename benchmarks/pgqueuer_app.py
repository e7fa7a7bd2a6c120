"""The PgQueuer consumer that benchmarks/bench_pgqueuer.py runs with PgQueuer's own worker.

    BENCH_PGQUEUER_DSN=postgresql://... python -m benchmarks.pgqueuer_app --batch-size 10

runs ``pgqueuer.run(create_pgqueuer, batch_size=10)`` on uvloop: what ``pgq run`` runs (its
supervisor, SIGTERM and SIGINT stop it), called without its command line, whose option parsing
fails with some versions of typer. One entrypoint, ``bench_noop``, whose job does nothing, as
``bench.noop`` in plain_app.py and ``benchmarks.handlers.Noop``. It imports PgQueuer and
asyncpg only (when it runs: benchmarks/bench_pgqueuer.py imports its names without PgQueuer
installed), so the worker's memory is PgQueuer's own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgqueuer import PgQueuer

ENTRYPOINT = "bench_noop"
DSN_ENV = "BENCH_PGQUEUER_DSN"


@asynccontextmanager
async def create_pgqueuer() -> AsyncIterator[PgQueuer]:
    """The consumer, as PgQueuer's quick start builds one: an asyncpg connection and one
    entrypoint with PgQueuer's defaults (no concurrency limit, failed jobs deleted)."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, PgQueuer
    from pgqueuer.models import Job

    connection = await asyncpg.connect(os.environ[DSN_ENV])
    try:
        pgq = PgQueuer(AsyncpgDriver(connection))

        @pgq.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            """A no-op job."""

        yield pgq
    finally:
        await connection.close()


def main() -> None:
    """Run PgQueuer's worker on :func:`create_pgqueuer` until SIGTERM."""
    parser = argparse.ArgumentParser(description="PgQueuer's worker on one no-op entrypoint")
    parser.add_argument("--batch-size", type=int, default=10, help="jobs per dequeue (10)")
    args = parser.parse_args()
    import pgqueuer

    worker = pgqueuer.run(create_pgqueuer, batch_size=args.batch_size)
    try:
        import uvloop
    except ImportError:  # pgq run falls back to asyncio's loop too
        asyncio.run(worker)
    else:
        uvloop.run(worker)


if __name__ == "__main__":
    main()
