"""The subcommands of ``celery-taskq``, each loaded only when it is used.

A command's module is imported when the command runs (or when ``--help`` lists it), so
``celery-taskq runner`` and the worker's pool processes forked from ``celery-taskq worker`` do
not carry the report, dashboard and schedule commands with their imports.
"""

from __future__ import annotations

import importlib

import click

from celery_taskq.cli.errors import TaskqGroup

COMMANDS: dict[str, str] = {
    "db": "celery_taskq.cli.db:db_group",
    "enqueue": "celery_taskq.cli.tasks:enqueue",
    "show": "celery_taskq.cli.tasks:show",
    "list": "celery_taskq.cli.tasks:list_command",
    "watch": "celery_taskq.cli.watch:watch",
    "cancel": "celery_taskq.cli.tasks:cancel",
    "retry": "celery_taskq.cli.tasks:retry",
    "resend": "celery_taskq.cli.tasks:resend",
    "report": "celery_taskq.cli.report:report_command",
    "health": "celery_taskq.cli.health:health",
    "top": "celery_taskq.cli.top:top",
    "prune": "celery_taskq.cli.prune:prune",
    "schedules": "celery_taskq.cli.schedules:schedules_group",
    "process": "celery_taskq.cli.runners:process",
    "create-runners": "celery_taskq.cli.runners:create_runners",
    "debug": "celery_taskq.cli.runners:debug",
    "runner": "celery_taskq.cli.runners:runner",
    "worker": "celery_taskq.cli.runners:worker",
    "dashboard": "celery_taskq.cli.dashboard:dashboard",
    "demo": "celery_taskq.cli.demo:demo",
}
"""Command name → ``module:attribute`` of its click command."""


def load_command(name: str) -> click.Command:
    """The click command registered as ``name`` in :data:`COMMANDS`, imported now."""
    module_name, _, attribute = COMMANDS[name].partition(":")
    command = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(command, click.Command):  # a wrong table entry is a bug, said plainly
        raise TypeError(f"{COMMANDS[name]} is not a click command")
    return command


class LazyGroup(TaskqGroup):
    """The command group, whose subcommands of :data:`COMMANDS` are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.add_command(load_command(cmd_name), cmd_name)
        return self.commands.get(cmd_name)
