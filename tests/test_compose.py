"""docker-compose.yml, the Dockerfile and config/celeryconfig.py, checked without Docker.

No Docker engine is needed: the compose file is parsed with PyYAML and every command it runs is
parsed by the real command-line interfaces: ``celery-taskq`` commands by the click group
:data:`celery_taskq.cli.cli`, ``celery`` commands by Celery's own click group (with the app named
by ``-A`` loaded), Flower's options by Flower's tornado options (and its ``FLOWER_*``
variables by Flower's own reading of them). ``celery-taskq worker``, which passes unknown
arguments through to Celery, is run with Celery's ``start`` replaced, and the arguments it hands
to Celery are parsed by Celery's worker command. Every ``TASKQ_*`` name must be a setting of
:class:`celery_taskq.core.settings.Settings`. The file is read as compose reads it: variables
(``${NAME:-default}``, ``${NAME:?error}``, ``$$``) are substituted from the environment
:data:`COMPOSE_ENVIRONMENT` (what an operator sets), or the one a test gives.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from celery import Celery, signals
from celery.app.utils import find_app
from celery.bin.base import CLIContext
from celery.utils.dispatch.signal import Signal

from celery_taskq import api
from celery_taskq import celery as taskq_celery
from celery_taskq.celery import (
    EVENTS_QUEUE,
    RUNNERS_QUEUE,
    TaskqCelery,
    install,
    settings_from_celery,
    worker_queues,
)
from celery_taskq.cli import cli as taskq_main
from celery_taskq.cli.app_loading import APP_ENV
from celery_taskq.core.settings import ENV_PREFIX, Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
CELERYCONFIG_FILE = PROJECT_ROOT / "config" / "celeryconfig.py"
ENV_EXAMPLE_FILE = PROJECT_ROOT / "config" / "taskq.env.example"
PYPROJECT_FILE = PROJECT_ROOT / "pyproject.toml"

SETTING_NAMES = frozenset(setting.name for setting in fields(Settings))
SETTING_ENV_NAMES = frozenset(ENV_PREFIX + name.upper() for name in SETTING_NAMES)
CELERY_CONFIG_PREFIX = taskq_celery.SETTINGS_PREFIX

EXPECTED_SERVICES = {"postgres", "redis", "migrate", "worker", "beat", "flower", "dashboard"}
MIGRATE_SERVICE = "migrate"
DEPENDS_ON_CONDITIONS = {
    "service_started",
    "service_healthy",
    "service_completed_successfully",
}
TASKQ_PROGRAM = "celery-taskq"
CELERY_PROGRAM = "celery"
PYTHON_PROGRAM = "python"
SHELL_OPERATORS = {";", "&&", "||", "|", "&"}
TASKQ_NAME = re.compile(r"\bTASKQ_[A-Za-z0-9_]+")
README_FILE = PROJECT_ROOT / "README.md"

COMPOSE_ENVIRONMENT = {"FLOWER_BASIC_AUTH": "admin:example-password"}
"""The variables an operator sets where compose runs: only what the file requires."""
LOCALHOST = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what an operator may choose
PUBLISH_VARIABLE = "PUBLISH_ADDRESS"
FLOWER_AUTH_VARIABLE = "FLOWER_BASIC_AUTH"


# --- Reading the compose file and the Dockerfile ----------------------------------------------


class InterpolationError(Exception):
    """A required variable (``${NAME:?message}``) is unset or empty: compose refuses to run."""


VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?+])(?P<argument>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """``text`` with compose's variable syntax substituted from ``environ``.

    ``$$`` is a literal ``$``; ``${NAME}`` and ``$NAME``; ``${NAME:-default}`` (unset or empty)
    and ``${NAME-default}`` (unset); ``${NAME:?message}`` and ``${NAME?message}`` fail;
    ``${NAME:+other}`` and ``${NAME+other}``.
    """

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("bare") or match.group("braced")
        value = environ.get(name)
        operator, argument = match.group("operator"), match.group("argument") or ""
        if operator is None:
            return value or ""
        missing = value is None or (operator.startswith(":") and value == "")
        kind = operator[-1]
        if kind == "-":
            return interpolate(argument, environ) if missing else str(value)
        if kind == "?":
            if missing:
                raise InterpolationError(f"required variable {name} is missing a value: {argument}")
            return str(value)
        return "" if missing else interpolate(argument, environ)

    return VARIABLE.sub(substitute, text)


def interpolated(data: Any, environ: Mapping[str, str]) -> Any:
    """Every string in ``data`` interpolated, as compose does with the whole file."""
    if isinstance(data, str):
        return interpolate(data, environ)
    if isinstance(data, list):
        return [interpolated(item, environ) for item in data]
    if isinstance(data, dict):
        return {key: interpolated(value, environ) for key, value in data.items()}
    return data


def load_compose(environ: Mapping[str, str] = COMPOSE_ENVIRONMENT) -> dict[str, Any]:
    """docker-compose.yml as plain data (anchors and ``<<`` merges resolved by PyYAML), with its
    variables substituted from ``environ``."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    result = interpolated(data, environ)
    assert isinstance(result, dict)
    return result


def compose_services(environ: Mapping[str, str] = COMPOSE_ENVIRONMENT) -> dict[str, dict[str, Any]]:
    """The ``services`` mapping of docker-compose.yml."""
    services = load_compose(environ).get("services")
    assert isinstance(services, dict), "docker-compose.yml has no services mapping"
    return services


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment``, in mapping or ``KEY=value`` list form, as a dict."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.partition("=") for item in environment)
        return {key: value for key, _, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in environment.items()}


def depends_on_of(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``depends_on`` targets, each with its condition (list form: started)."""
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return {str(name): "service_started" for name in depends_on}
    return {
        str(name): str((options or {}).get("condition", "service_started"))
        for name, options in depends_on.items()
    }


def built_image_services(services: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Services running an image built here: with ``build``, or the image a ``build`` names."""
    built_images = {service.get("image") for service in services.values() if "build" in service}
    return {
        name
        for name, service in services.items()
        if "build" in service or service.get("image") in built_images - {None}
    }


def waits_for(services: Mapping[str, Mapping[str, Any]], name: str) -> set[str]:
    """Every service ``name`` depends on, directly or through other services."""
    seen: set[str] = set()
    pending = [name]
    while pending:
        for target in depends_on_of(services[pending.pop()]):
            if target not in seen and target in services:
                seen.add(target)
                pending.append(target)
    return seen


@dataclass(frozen=True)
class ImageDefaults:
    """The ENTRYPOINT and CMD (exec form) of the Dockerfile the app services are built from."""

    entrypoint: list[str]
    cmd: list[str]


def dockerfile_path(services: Mapping[str, Mapping[str, Any]]) -> Path:
    """The Dockerfile named by the (one) ``build`` section of the compose file."""
    builds = [service["build"] for service in services.values() if "build" in service]
    assert len(builds) == 1, f"expected one service that builds the image, found {len(builds)}"
    build = builds[0]
    context, dockerfile = (
        (build, "Dockerfile")
        if isinstance(build, str)
        else (build.get("context", "."), build.get("dockerfile", "Dockerfile"))
    )
    return COMPOSE_FILE.parent / context / dockerfile


def image_defaults(dockerfile: Path) -> ImageDefaults:
    """The last ENTRYPOINT and CMD of ``dockerfile``; shell form runs under ``/bin/sh -c``."""
    found: dict[str, list[str]] = {"ENTRYPOINT": [], "CMD": []}
    for line in dockerfile.read_text().splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction.upper() in found:
            rest = rest.strip()
            found[instruction.upper()] = (
                list(json.loads(rest)) if rest.startswith("[") else ["/bin/sh", "-c", rest]
            )
    return ImageDefaults(entrypoint=found["ENTRYPOINT"], cmd=found["CMD"])


def compose_argv(value: str | Sequence[str]) -> list[str]:
    """A compose ``command``/``entrypoint`` (already interpolated) as argv."""
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def service_argv(service: Mapping[str, Any], defaults: ImageDefaults) -> list[str]:
    """What the container runs: entrypoint, then command (the image's CMD when unset)."""
    if "entrypoint" in service:
        entrypoint = compose_argv(service["entrypoint"])
        command = compose_argv(service["command"]) if "command" in service else []
    else:
        entrypoint = defaults.entrypoint
        command = compose_argv(service["command"]) if "command" in service else defaults.cmd
    return [*entrypoint, *command]


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a one-line shell script, split at ``;``, ``&&``, ``||``, ``|``."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SHELL_OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def healthcheck_argvs(service: Mapping[str, Any]) -> list[list[str]]:
    """The commands of a service's healthcheck ``test`` (CMD, CMD-SHELL or string form)."""
    test = (service.get("healthcheck") or {}).get("test")
    if test is None or test == ["NONE"]:
        return []
    if isinstance(test, str):
        return shell_commands(test)
    kind, *rest = (str(part) for part in test)
    if kind == "CMD-SHELL":
        return shell_commands(" ".join(rest))
    assert kind == "CMD", f"healthcheck test must start with CMD, CMD-SHELL or NONE, not {kind!r}"
    return [rest]


@dataclass(frozen=True)
class ComposeCommand:
    """One command the compose file runs in the app image, and the environment it runs in."""

    service: str
    source: str
    argv: list[str]
    environment: dict[str, str]

    @property
    def id(self) -> str:
        """The pytest id: service and where the command comes from."""
        return f"{self.service}-{self.source}"


def app_commands() -> list[ComposeCommand]:
    """The image's default command, and every command and healthcheck of its services."""
    services = compose_services()
    defaults = image_defaults(dockerfile_path(services))
    commands = [ComposeCommand("image", "default", [*defaults.entrypoint, *defaults.cmd], {})]
    for name in sorted(built_image_services(services)):
        service = services[name]
        environment = environment_of(service)
        commands.append(
            ComposeCommand(name, "command", service_argv(service, defaults), environment)
        )
        for index, argv in enumerate(healthcheck_argvs(service)):
            commands.append(ComposeCommand(name, f"healthcheck{index}", argv, environment))
    return commands


# --- Keeping app creation from leaking into other tests ---------------------------------------


def celery_signals() -> list[Signal]:
    """Every signal Celery defines (install() connects receivers to some of them)."""
    return [value for value in vars(signals).values() if isinstance(value, Signal)]


@pytest.fixture
def isolated_celery_apps(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what creating celery_taskq apps does to process-wide state.

    install() adds an enqueue hook and connects Celery signals; ``celery -A celery_taskq``
    creates the lazily made module-level app. All three are restored afterwards, and the
    ``TASKQ_*`` variables of the environment running the tests are hidden.
    """
    monkeypatch.setattr(api, "_enqueue_hooks", [])
    monkeypatch.setattr(taskq_celery, "_app", None)
    for name in SETTING_ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    saved = {signal: list(signal.receivers) for signal in celery_signals()}
    yield
    for signal, receivers in saved.items():
        signal.receivers[:] = receivers
        signal.sender_receivers_cache.clear()


# --- Parsing commands with the real CLIs ------------------------------------------------------


def parse_group(
    group: click.Group, name: str, args: Sequence[str], parent: click.Context | None = None
) -> tuple[click.Context, list[str]]:
    """Parse ``group``'s own options (unknown ones fail); return its context and the rest.

    The rest starts with the subcommand's name, as click's own invocation sees it.
    """
    context = click.Context(group, info_name=name, parent=parent, **group.context_settings)
    with context.scope(cleanup=False):
        rest = click.Command.parse_args(group, context, list(args))
    return context, rest


def resolve_subcommand(
    group: click.Group, context: click.Context, rest: list[str]
) -> tuple[str, click.Command, list[str]]:
    """The subcommand ``rest`` names (a missing or unknown one fails) and its arguments."""
    if not rest:
        raise click.UsageError(f"no subcommand of {context.command_path}", context)
    name, command, args = group.resolve_command(context, rest)
    assert name is not None
    assert command is not None
    return name, command, args


def parse_taskq_command(args: Sequence[str]) -> click.Context:
    """Parse a ``celery-taskq`` command line, walking nested groups; the leaf's context."""
    group: click.Group = taskq_main
    context, rest = parse_group(group, TASKQ_PROGRAM, args)
    while True:
        name, command, rest = resolve_subcommand(group, context, rest)
        if isinstance(command, click.Group):
            group = command
            context, rest = parse_group(group, name, rest, parent=context)
            continue
        return command.make_context(name, rest, parent=context, resilient_parsing=False)


def run_pass_through_command(
    args: Sequence[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, list[str]]:
    """Run a ``celery-taskq`` command with Celery's ``start`` replaced; the app and its argv."""
    started: list[tuple[Any, list[str]]] = []

    def record_start(self: Any, argv: list[str] | None = None) -> None:
        started.append((self, list(argv or [])))

    monkeypatch.setattr(Celery, "start", record_start)
    taskq_main.main(args=list(args), prog_name=TASKQ_PROGRAM, standalone_mode=False)
    assert len(started) == 1, f"`celery-taskq {shlex.join(args)}` did not start Celery once"
    return started[0]


def check_taskq_command(args: Sequence[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``celery-taskq`` command: real subcommands and options; Celery checks what it passes."""
    leaf = parse_taskq_command(args)
    if leaf.ignore_unknown_options:
        # e.g. `worker`: unknown arguments go to Celery, which must accept them.
        app, celery_argv = run_pass_through_command(args, monkeypatch)
        check_celery_command(celery_argv, app=app)


def celery_cli() -> click.Group:
    """Celery's click group, imported only when a test needs it.

    Importing it loads every ``celery`` plugin (Flower, tornado, ...): some 20 MiB that would
    otherwise join every test process at collection, where tests running a runner in-process
    with the 100 MiB default memory limit (``celery-taskq demo``) would see it.
    """
    from celery.bin.celery import celery

    assert isinstance(celery, click.Group)
    return celery


def check_celery_command(args: Sequence[str], app: Any = None) -> None:
    """A ``celery`` command: the app loads, the subcommand exists, its options are accepted."""
    from celery.worker.control import Panel

    celery_main = celery_cli()
    context, rest = parse_group(celery_main, CELERY_PROGRAM, args)
    if app is None:
        app_name = context.params["app"]
        assert app_name, f"`celery {shlex.join(args)}` does not name its app with -A"
        check_app_in_fresh_process(app_name)
        app = find_app(app_name)
    assert isinstance(app, Celery), f"-A {context.params['app']!r} is not a Celery app"
    assert isinstance(getattr(app, "taskq", None), TaskqCelery), (
        "the app has no celery_taskq installed"
    )
    context.obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    name, command, rest = resolve_subcommand(celery_main, context, rest)
    assert name in celery_main.commands
    leaf = command.make_context(name, rest, parent=context, resilient_parsing=False)
    if name == "worker":
        check_worker_queues(app, leaf.params["queues"])
    elif name in {"inspect", "control"}:
        meta = Panel.meta.get(leaf.params["command"])
        assert meta is not None, f"no remote control command {leaf.params['command']!r}"
        assert meta.type == name, f"{leaf.params['command']!r} is not a `{name}` command"
    elif name == "flower":
        check_flower_options(leaf.params["tornado_argv"])
        check_flower_environment()


FIND_APP_SCRIPT = """
import sys
from celery.app.utils import find_app
from celery_taskq.celery import TaskqCelery
app = find_app(sys.argv[1])
assert isinstance(getattr(app, "taskq", None), TaskqCelery), f"{app!r} has no celery_taskq"
"""


def check_app_in_fresh_process(app_name: str) -> None:
    """``-A app_name`` finds an app with celery_taskq installed, as in a new container.

    In this process an app made by an earlier check is Celery's current app, and ``find_app``
    can fall back to it; a new interpreter, in an empty directory, cannot.
    """
    with tempfile.TemporaryDirectory() as empty_directory:
        result = subprocess.run(
            [sys.executable, "-c", FIND_APP_SCRIPT, app_name],
            cwd=empty_directory,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
    assert result.returncode == 0, f"-A {app_name} does not load:\n{result.stderr}"


def check_worker_queues(app: Any, queues: Sequence[str] | None) -> None:
    """A worker consumes celery_taskq's event and runner queues."""
    consumed = set(queues) if queues else {queue.name for queue in app.conf.task_queues or ()}
    missing = {EVENTS_QUEUE, RUNNERS_QUEUE} - consumed
    assert not missing, f"the worker does not consume {sorted(missing)}"


def check_flower_options(tornado_argv: Sequence[str]) -> None:
    """Flower's own options (parsed by tornado) exist and their values convert."""
    import tornado.options

    options = tornado.options.options
    names = [arg[2:].partition("=")[0] for arg in tornado_argv if arg.startswith("--")]
    unknown = [name for name in names if name not in options]
    assert not unknown, f"Flower has no options {unknown}"
    saved = {name: getattr(options, name) for name in names}
    try:
        options.parse_command_line([CELERY_PROGRAM, *tornado_argv], final=False)
    finally:
        for name, value in saved.items():
            setattr(options, name, value)


def flower_environment_options() -> dict[str, Any]:
    """The Flower options that Flower's own reading of ``FLOWER_*`` variables sets (restored)."""
    import tornado.options
    from flower.command import apply_env_options  # type: ignore[import-untyped]

    options = tornado.options.options
    names = [
        name.replace("-", "_")
        for name in options._options
        if os.environ.get("FLOWER_" + name.replace("-", "_").upper())
    ]
    saved = {name: getattr(options, name) for name in names}
    try:
        apply_env_options()
        return {name: getattr(options, name) for name in names}
    finally:
        for name, value in saved.items():
            setattr(options, name, value)


def check_flower_environment() -> None:
    """Every ``FLOWER_*`` variable is an option Flower reads (unknown ones fail)."""
    flower_environment_options()


def check_command(command: ComposeCommand, monkeypatch: pytest.MonkeyPatch) -> None:
    """Check one command of the app image with the service's environment."""
    assert command.argv, f"{command.id} runs nothing"
    for name, value in command.environment.items():
        monkeypatch.setenv(name, value)
    program, *args = command.argv
    if program == TASKQ_PROGRAM:
        try:
            check_taskq_command(args, monkeypatch)
        except click.exceptions.Exit as exit_:  # --help, --version: accepted once parsed
            if exit_.exit_code != 0:
                raise
    elif program == CELERY_PROGRAM:
        check_celery_command(args)
    elif program == PYTHON_PROGRAM and args[:1] == ["-c"]:
        compile(args[1], f"<{command.id}>", "exec")
    else:
        pytest.fail(f"{command.id} runs {program!r}, not celery-taskq, celery or python -c")


# --- The compose file -------------------------------------------------------------------------


def test_compose_file_defines_the_stack() -> None:
    """Database, broker, migration, worker, beat and Flower are all there."""
    assert set(compose_services()) >= EXPECTED_SERVICES


@pytest.mark.usefixtures("isolated_celery_apps")
@pytest.mark.parametrize("command", app_commands(), ids=lambda command: command.id)
def test_command_is_accepted_by_the_real_cli(
    command: ComposeCommand, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every command of the app services names real subcommands and options."""
    check_command(command, monkeypatch)


def test_celery_taskq_program_is_the_package_cli() -> None:
    """``celery-taskq`` in the image is the console script of :func:`celery_taskq.cli.main`."""
    scripts = importlib.metadata.entry_points(group="console_scripts", name=TASKQ_PROGRAM)
    assert [script.value for script in scripts] == ["celery_taskq.cli:main"]


@pytest.mark.parametrize(
    "source",
    [COMPOSE_FILE, ENV_EXAMPLE_FILE, PROJECT_ROOT / "Dockerfile"],
    ids=lambda path: path.name,
)
def test_taskq_variables_are_settings(source: Path) -> None:
    """Every ``TASKQ_*`` name is ``TASKQ_`` plus the upper-cased name of a Settings field, or
    the command line's ``TASKQ_APP``.

    The whole text is searched, so values, ``${...}`` references and comments count too.
    """
    names = set(TASKQ_NAME.findall(source.read_text()))
    if source == COMPOSE_FILE:
        assert names, "docker-compose.yml sets no TASKQ_* variable"
    unknown = names - SETTING_ENV_NAMES - {APP_ENV}
    assert not unknown, f"{source.name}: not settings: {sorted(unknown)}"


@pytest.mark.parametrize("name", sorted(built_image_services(compose_services())))
def test_service_environment_resolves(name: str) -> None:
    """The app services' ``TASKQ_*`` values are valid and reach the resolved settings."""
    environment = environment_of(compose_services()[name])
    assert "TASKQ_DATABASE_URL" in environment, f"{name} would use the SQLite default"
    settings = Settings.resolve(environ=environment)
    for setting in SETTING_NAMES:
        raw = environment.get(ENV_PREFIX + setting.upper())
        if raw is not None and isinstance(getattr(settings, setting), str):
            assert getattr(settings, setting) == raw


def test_depends_on_targets_exist() -> None:
    """Every dependency is a service, with a valid condition that the target can meet."""
    services = compose_services()
    for name, service in services.items():
        for target, condition in depends_on_of(service).items():
            assert target in services, f"{name} depends on a missing service {target!r}"
            assert condition in DEPENDS_ON_CONDITIONS, f"{name}: bad condition {condition!r}"
            if condition == "service_healthy":
                assert healthcheck_argvs(services[target]), f"{target} has no healthcheck"
            if condition == "service_completed_successfully":
                restart = str(services[target].get("restart", "no"))
                assert restart in {"no", "on-failure"}, f"{target} restarts: it never completes"


def test_migrate_upgrades_the_database_first() -> None:
    """``migrate`` runs ``db upgrade`` once the database is healthy."""
    services = compose_services()
    migrate = services[MIGRATE_SERVICE]
    defaults = image_defaults(dockerfile_path(services))
    leaf = parse_taskq_command(service_argv(migrate, defaults)[1:])
    assert leaf.command_path == f"{TASKQ_PROGRAM} db upgrade"
    assert depends_on_of(migrate) == {"postgres": "service_healthy"}


def test_database_users_wait_for_the_migration() -> None:
    """Every other service given the database waits for ``migrate`` to succeed."""
    services = compose_services()
    users = [
        name
        for name, service in services.items()
        if "TASKQ_DATABASE_URL" in environment_of(service) and name != MIGRATE_SERVICE
    ]
    assert users, "no service uses the database"
    for name in users:
        condition = depends_on_of(services[name]).get(MIGRATE_SERVICE)
        assert condition == "service_completed_successfully", f"{name} does not wait for migrate"


def test_urls_name_services_that_are_waited_for() -> None:
    """Database and broker hosts are services the app waits for; the credentials match.

    ``migrate`` only creates the tables, so it alone need not wait for the broker.
    """
    services = compose_services()
    postgres = environment_of(services["postgres"])
    for name in built_image_services(services):
        environment = environment_of(services[name])
        assert "TASKQ_DATABASE_URL" in environment, f"{name} has no TASKQ_DATABASE_URL"
        for variable in ("TASKQ_DATABASE_URL", "TASKQ_BROKER_URL"):
            if variable not in environment or (
                variable == "TASKQ_BROKER_URL" and name == MIGRATE_SERVICE
            ):
                continue
            host = urlsplit(environment[variable]).hostname
            assert host in services, f"{name}: {variable} host {host!r} is not a service"
            assert host in waits_for(services, name), f"{name} does not wait for {host}"
        url = urlsplit(environment["TASKQ_DATABASE_URL"])
        assert (url.username, url.password, url.path.lstrip("/"), url.port or 5432) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
            postgres["POSTGRES_DB"],
            5432,
        ), f"{name}: TASKQ_DATABASE_URL does not match the postgres service"


def test_beat_schedule_file_is_on_a_volume() -> None:
    """Beat's schedule survives restarts: its directory is a mounted volume."""
    services = compose_services()
    beat = services["beat"]
    argv = service_argv(beat, image_defaults(dockerfile_path(services)))
    schedule = Path(argv[argv.index("--schedule") + 1])
    targets = {Path(str(volume).split(":")[1]) for volume in beat.get("volumes", [])}
    assert schedule.parent in targets


def test_dashboard_listens_on_its_published_port() -> None:
    """The dashboard listens on all interfaces at the port it publishes and health-checks,
    and links to Flower at the port Flower publishes."""
    services = compose_services()
    dashboard = services["dashboard"]
    leaf = parse_taskq_command(
        service_argv(dashboard, image_defaults(dockerfile_path(services)))[1:]
    )
    assert leaf.command_path == f"{TASKQ_PROGRAM} dashboard"
    port = leaf.params["port"]
    assert leaf.params["host"] == "0.0.0.0"  # noqa: S104 - inside its container
    assert [str(mapping) for mapping in dashboard["ports"]] == [f"{LOCALHOST}:{port}:{port}"]
    assert any(f"localhost:{port}/readyz" in part for part in healthcheck_argvs(dashboard)[0])
    flower_port = str(services["flower"]["ports"][0]).split(":")[1]
    environment = environment_of(dashboard)
    assert environment["TASKQ_FLOWER_URL"] == f"http://localhost:{flower_port}"
    assert "TASKQ_DASHBOARD_TOKEN" in environment  # read-only unless the host sets it


def published(services: Mapping[str, Mapping[str, Any]]) -> dict[str, list[tuple[str, str]]]:
    """Each service's published ports as (host address, host port); the address "" is all."""
    found: dict[str, list[tuple[str, str]]] = {}
    for name, service in services.items():
        for mapping in service.get("ports") or []:
            if isinstance(mapping, dict):  # the long syntax
                address, port = str(mapping.get("host_ip", "")), str(mapping.get("published", ""))
            else:
                parts = str(mapping).rsplit(":", 2)
                address, port = (parts[0], parts[1]) if len(parts) == 3 else ("", parts[0])
            found.setdefault(name, []).append((address, port))
    return found


def test_ports_are_published_on_localhost_unless_the_operator_says_otherwise() -> None:
    """By default only 127.0.0.1 reaches the dashboard and Flower; PUBLISH_ADDRESS widens it."""
    by_default = published(compose_services())
    assert set(by_default) == {"dashboard", "flower"}  # the database and the broker stay inside
    for name, ports in by_default.items():
        assert all(address == LOCALHOST for address, _ in ports), (name, ports)
    widened = published(compose_services({**COMPOSE_ENVIRONMENT, PUBLISH_VARIABLE: ALL_INTERFACES}))
    for name, ports in widened.items():
        assert all(address == ALL_INTERFACES for address, _ in ports), (name, ports)


def test_flower_will_not_start_without_basic_auth() -> None:
    """Compose refuses the whole file until FLOWER_BASIC_AUTH is set (an empty one too), and
    then Flower reads it as its ``basic_auth`` option; its healthcheck needs no password."""
    for environ in ({}, {FLOWER_AUTH_VARIABLE: ""}):
        with pytest.raises(InterpolationError, match=FLOWER_AUTH_VARIABLE):
            load_compose(environ)
    service = compose_services()["flower"]
    environment = environment_of(service)
    assert environment[FLOWER_AUTH_VARIABLE] == COMPOSE_ENVIRONMENT[FLOWER_AUTH_VARIABLE]
    assert not any("basic" in part for part in compose_argv(service["command"]))  # not in ps
    # The healthcheck's page is not wrapped by tornado's @authenticated, as Flower's pages are.
    from flower.views.monitor import Healthcheck  # type: ignore[import-untyped]
    from flower.views.workers import WorkersView  # type: ignore[import-untyped]

    assert any("/healthcheck" in part for part in healthcheck_argvs(service)[0])
    assert hasattr(WorkersView.get, "__wrapped__")
    assert not hasattr(Healthcheck.get, "__wrapped__")


def test_flower_reads_its_basic_auth_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's own reading of FLOWER_BASIC_AUTH gives the user and password compose passes."""
    for name in [name for name in os.environ if name.startswith("FLOWER_")]:
        monkeypatch.delenv(name)
    for name, value in environment_of(compose_services()["flower"]).items():
        if name.startswith("FLOWER_"):
            monkeypatch.setenv(name, value)
    assert flower_environment_options() == {
        "basic_auth": [COMPOSE_ENVIRONMENT[FLOWER_AUTH_VARIABLE]]
    }


def test_every_app_service_runs_the_app_taskq_app_names() -> None:
    """Unset, TASKQ_APP leaves the ready app; set, every service of the app image runs that
    app: the celery-taskq commands through the variable, the celery ones through ``-A``."""
    for app_name, expected in ((None, "celery_taskq"), ("myapp.celery:app", "myapp.celery:app")):
        environ = dict(COMPOSE_ENVIRONMENT)
        if app_name is not None:
            environ[APP_ENV] = app_name
        services = compose_services(environ)
        defaults = image_defaults(dockerfile_path(services))
        for name in built_image_services(services):
            environment = environment_of(services[name])
            assert environment[APP_ENV] == (app_name or ""), name
            assert environment["CELERY_BROKER_URL"] == environment["TASKQ_BROKER_URL"], name
            for argv in [
                service_argv(services[name], defaults),
                *healthcheck_argvs(services[name]),
            ]:
                if argv[:1] == [CELERY_PROGRAM]:
                    assert argv[argv.index("-A") + 1] == expected, (name, argv)


def test_readme_tells_how_to_expose_the_dashboard_and_flower() -> None:
    """The README's docker-compose section names both variables."""
    after = README_FILE.read_text().split("### docker-compose", 1)[1]
    section = re.split(r"\n#{2,3} ", after, maxsplit=1)[0]
    for variable in (PUBLISH_VARIABLE, FLOWER_AUTH_VARIABLE, "TASKQ_DASHBOARD_TOKEN"):
        assert variable in section, variable


def test_image_installs_what_its_services_run_and_runs_unprivileged() -> None:
    """The Dockerfile installs the PostgreSQL driver, the dashboard and Flower, not the test
    tools, and drops root; the dev extra brings every extra (the tests use them all)."""
    dockerfile = dockerfile_path(compose_services()).read_text()
    assert re.search(r"^RUN pip install \"\.\[postgres,web,flower\]\"$", dockerfile, re.M)
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users, "the image runs as root"
    assert users[-1] not in {"root", "0"}
    extras = tomllib.loads(PYPROJECT_FILE.read_text())["project"]["optional-dependencies"]
    assert "flower>=2.0" in extras["flower"]
    assert extras["all"] == ["celery_taskq[postgres,web,flower]"]
    assert {"celery_taskq[all]", "pyyaml>=6", "types-PyYAML>=6"} <= set(extras["dev"])


# --- config/celeryconfig.py -------------------------------------------------------------------


def load_celeryconfig() -> ModuleType:
    """Import config/celeryconfig.py from its path."""
    spec = importlib.util.spec_from_file_location("celeryconfig", CELERYCONFIG_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_celeryconfig_names_only_real_settings() -> None:
    """Every ``taskq_*`` key, set or shown in a comment, is a Settings field."""
    defined = {name for name in vars(load_celeryconfig()) if name.startswith(CELERY_CONFIG_PREFIX)}
    assert defined, "celeryconfig.py sets no taskq_* key"
    mentioned = set(
        re.findall(
            rf"^#?\s*{CELERY_CONFIG_PREFIX}(\w+)\s*[:=]",
            CELERYCONFIG_FILE.read_text(),
            flags=re.MULTILINE,
        )
    )
    unknown = {name.removeprefix(CELERY_CONFIG_PREFIX) for name in defined} | mentioned
    assert not unknown - SETTING_NAMES, f"not settings: {sorted(unknown - SETTING_NAMES)}"


def test_celeryconfig_values_are_the_defaults() -> None:
    """The example shows each setting it sets at its default from celery_taskq.core.settings."""
    module = load_celeryconfig()
    for setting in fields(Settings):
        key = CELERY_CONFIG_PREFIX + setting.name
        if hasattr(module, key):
            assert setting.default is not MISSING
            assert getattr(module, key) == setting.default, f"{key} is not the default"


def test_celeryconfig_names_the_worker_queues() -> None:
    """Every ``-Q`` it tells workers to use is the one celery_taskq's own worker uses."""
    queues = re.findall(r"-Q\s+([\w.,-]+)", CELERYCONFIG_FILE.read_text())
    assert queues, "celeryconfig.py does not show the worker's -Q"
    assert set(queues) == {worker_queues(Celery("queues"))}


@pytest.mark.usefixtures("isolated_celery_apps")
def test_celeryconfig_configures_an_app() -> None:
    """An app loading the example resolves valid settings, and install() works on it."""
    module = load_celeryconfig()
    app = Celery("example")
    app.config_from_object(module)
    settings = settings_from_celery(app.conf, environ={})
    assert settings.database_url == module.taskq_database_url
    assert settings.runner_max_lifetime == module.taskq_runner_max_lifetime
    install(app, settings=settings)
    assert app.conf.broker_url == module.broker_url
    assert {EVENTS_QUEUE, RUNNERS_QUEUE} <= {queue.name for queue in app.conf.task_queues}
