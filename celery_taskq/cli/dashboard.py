"""``celery-taskq dashboard``: the web dashboard, HTTP API and metrics (FastAPI only to serve)."""

from __future__ import annotations

import click

from celery_taskq.cli.invocation import CliContext, pass_context


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port."
)
@pass_context
def dashboard(context: CliContext, host: str, port: int) -> None:
    """The web dashboard, the HTTP API (/api/v1) and Prometheus metrics (/metrics).

    Read-only unless TASKQ_DASHBOARD_TOKEN is set; TASKQ_FLOWER_URL adds links to Flower.
    """
    from celery_taskq.web.server import serve  # FastAPI and uvicorn only when serving

    serve(context.settings, host=host, port=port)
