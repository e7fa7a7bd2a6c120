"""``celery-taskq dashboard``: the web dashboard, HTTP API and metrics (FastAPI only to serve)."""

from __future__ import annotations

import click

from celery_taskq.cli.invocation import CliContext, pass_context

WEB_EXTRA_MODULES = frozenset(
    {"fastapi", "starlette", "pydantic", "jinja2", "uvicorn", "prometheus_client"}
)
"""What the ``web`` extra installs, and the dashboard alone imports."""


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port."
)
@pass_context
def dashboard(context: CliContext, host: str, port: int) -> None:
    """The web dashboard, the HTTP API (/api/v1) and Prometheus metrics (/metrics).

    Read-only unless TASKQ_DASHBOARD_TOKEN is set; TASKQ_FLOWER_URL adds links to Flower.
    Re-sending native Celery tasks publishes through the app given with --app (TASKQ_APP).
    """
    try:
        from celery_taskq.web.server import serve  # FastAPI and uvicorn only when serving
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in WEB_EXTRA_MODULES:
            raise
        raise click.ClickException(
            f"the dashboard needs the web extra: pip install 'celery_taskq[web]' ({exc})"
        ) from None
    serve(context.settings, host=host, port=port, celery_app=context.celery_app)
