"""The deploy path as deployed: the Dockerfile's install, the compose services' own commands.

No Docker engine runs here (:mod:`tests.deploy_stack` says what is done instead). A fresh venv
gets the Dockerfile's own ``pip install`` line, once per session. ``migrate``, ``worker``,
``beat``, ``flower`` and ``dashboard`` run their own commands with their own environment;
``postgres`` and ``redis`` are a real PostgreSQL, set up as the ``postgres`` image sets itself
up from its environment, and a real Redis, both started by the suite.

The stack is then used as an operator uses it: the compose file's own one-off commands queue a
handler task and show it, and the dashboard's HTTP API reads it back; Flower, behind its basic
auth, knows the worker. Then the same services run an app of one's own (``TASKQ_APP``): the
worked example of ``examples/celery_app``, copied into the working directory as an image built
``FROM`` this one would hold it. Its handler task and an audited native task of its own are
read back through the dashboard's API.
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import port_for
import psycopg
import pytest
from psycopg import sql
from pytest_postgresql.executors import PostgreSQLExecutor

from tests.conftest import PROJECT_ROOT
from tests.deploy_stack import (
    LOOPBACK,
    Deployment,
    Image,
    Network,
    documented_one_off_commands,
    extras_of,
    get_json,
    install_image,
    published_ports,
    read_image_recipe,
    wait_until,
)
from tests.test_compose import (
    COMPOSE_ENVIRONMENT,
    compose_services,
    dockerfile_path,
    environment_of,
)

EXAMPLE_APP = PROJECT_ROOT / "examples" / "celery_app" / "myapp"
APP_SERVICES = ("worker", "beat", "flower", "dashboard")
"""The long-running services of the app image (``migrate`` runs first, once)."""
SERVER_SERVICES = ("postgres", "redis")
READY_APP = "ready app"
YOUR_APP = "your app"


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The Dockerfile's copies and install line run in a fresh venv, once per session."""
    recipe = read_image_recipe(dockerfile_path(compose_services()))
    return install_image(recipe, tmp_path_factory.mktemp("image"))


@pytest.fixture
def postgres_service(taskq_postgresql_server: PostgreSQLExecutor) -> Iterator[str]:
    """The local address of a database made as the ``postgres`` image makes it from
    POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB; dropped after the test."""
    environment = environment_of(compose_services()["postgres"])
    user, password = environment["POSTGRES_USER"], environment["POSTGRES_PASSWORD"]
    database = environment.get("POSTGRES_DB", user)
    server = taskq_postgresql_server
    admin = psycopg.connect(
        host=server.host, port=server.port, user=server.user, dbname="postgres", autocommit=True
    )
    with admin:
        exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
        if exists is None:
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(user), sql.Literal(password)
                )
            )
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )
        admin.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(user)
            )
        )
    yield f"{server.host}:{server.port}"
    with psycopg.connect(
        host=server.host, port=server.port, user=server.user, dbname="postgres", autocommit=True
    ) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )


@pytest.fixture
def deployment(
    request: pytest.FixtureRequest,
    image: Image,
    tmp_path: Path,
    postgres_service: str,
    redis_url: str,
) -> Iterator[Deployment]:
    """The compose stack's app services, with celery_taskq's ready app, or (parametrised
    indirectly with :data:`YOUR_APP`) with an app of one's own, ``TASKQ_APP``: the worked
    example, in the working directory of the image."""
    home = tmp_path / "home"
    shutil.copytree(image.root / image.recipe.workdir.lstrip("/"), home)
    operator = dict(COMPOSE_ENVIRONMENT)
    if getattr(request, "param", READY_APP) == YOUR_APP:
        shutil.copytree(
            EXAMPLE_APP, home / EXAMPLE_APP.name, ignore=shutil.ignore_patterns("__pycache__")
        )
        operator["TASKQ_APP"] = EXAMPLE_APP.name
    services = compose_services(operator)
    redis = redis_url.removeprefix("redis://").split("/")[0]
    network = Network(
        services={"postgres:5432": postgres_service, "redis:6379": redis},
        ports={port: str(port_for.select_random()) for port in published_ports(services)},
    )
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source, _, mount = str(volume).partition(":")
            if name not in SERVER_SERVICES:
                local = tmp_path / "volumes" / source
                local.mkdir(parents=True, exist_ok=True)
                network.mounts[mount] = str(local)
    stack = Deployment(image=image, network=network, home=home, operator_environment=operator)
    try:
        yield stack
    finally:
        stack.stop()


def test_the_image_fixture_installs_with_the_dockerfile_line() -> None:
    # Given the Dockerfile's own RUN line that installs the package
    dockerfile = dockerfile_path(compose_services())
    lines = re.findall(r"^RUN\s+(pip install .*)$", dockerfile.read_text(), flags=re.M)
    assert len(lines) == 1, lines
    # Then it is, word for word, what the image fixture runs in its venv
    recipe = read_image_recipe(dockerfile)
    assert recipe.install == shlex.split(lines[0])
    # And it installs the working tree with extras the package declares
    extras = extras_of(recipe.install)
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["optional-dependencies"])
    assert extras <= declared, f"unknown extras {extras - declared}"
    # And the image has what its services run, and none of the test tools
    assert {"postgres", "web", "flower"} <= extras
    assert "dev" not in extras
    # And it copies what the install needs from the build context
    copied = {source for sources, _ in recipe.copies for source in sources}
    assert {"pyproject.toml", "README.md", "LICENSE", "celery_taskq"} <= copied


def start_stack(deployment: Deployment) -> None:
    """``docker compose up``: the migration to completion, then the services until healthy."""
    migrate = subprocess.run(
        deployment.argv("migrate"),
        cwd=deployment.home,
        env=deployment.environment("migrate"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    for service in APP_SERVICES:
        deployment.start(service)
    for service in APP_SERVICES:
        if "healthcheck" in deployment.services()[service]:
            wait_until(partial(deployment.healthy, service), f"{service} is healthy", deployment)


def dashboard_api(deployment: Deployment) -> str:
    """The base URL of the dashboard's HTTP API, at the port it is published on."""
    return f"http://{LOOPBACK}:{deployment.network.ports['8000']}/api/v1"


def queue_the_documented_handler_task(deployment: Deployment) -> int:
    """Run the compose file's own one-off commands: queue a handler task, show it; its id."""
    commands = documented_one_off_commands()
    assert [argv[:2] for _, argv in commands] == [
        ["celery-taskq", "enqueue"],
        ["celery-taskq", "show"],
    ]
    (enqueue_service, enqueue), (show_service, show) = commands
    task_id = int(deployment.run(enqueue_service, enqueue))
    assert f"task {task_id}:" in deployment.run(show_service, show)
    return task_id


def finished_task(deployment: Deployment, task_id: int) -> dict[str, Any]:
    """The task as the dashboard's API shows it, once its last run succeeded."""

    def succeeded() -> Any:
        task = get_json(f"{dashboard_api(deployment)}/tasks/{task_id}")
        return task if task["last_status"] == "success" else None

    task: dict[str, Any] = wait_until(succeeded, f"task {task_id} succeeded", deployment)
    return task


@pytest.mark.slow
def test_the_compose_stack_works_a_handler_task(deployment: Deployment) -> None:
    # Given the stack up: the schema made by migrate, then worker, beat, Flower and dashboard
    start_stack(deployment)

    # When the compose file's own one-off commands queue a handler task
    handler_task = queue_the_documented_handler_task(deployment)

    # Then the dashboard's API shows it done by a runner of the ready app's worker
    task = finished_task(deployment, handler_task)
    assert task["handler"] == "celery_taskq.examples.Greet"
    assert task["runs"][-1]["results"] == {"greeting": "Hello, compose!"}
    # And Flower, behind its basic auth, knows the worker
    workers = get_json(
        f"http://{LOOPBACK}:{deployment.network.ports['5555']}/api/workers?refresh=1",
        auth=COMPOSE_ENVIRONMENT["FLOWER_BASIC_AUTH"],
    )
    assert f"celery@{socket.gethostname()}" in workers


@pytest.mark.slow
@pytest.mark.parametrize("deployment", [YOUR_APP], indirect=True)
def test_the_compose_stack_runs_your_app_with_handler_and_audited_native_tasks(
    deployment: Deployment,
) -> None:
    # Given the stack up with TASKQ_APP naming the app, in the image's working directory
    start_stack(deployment)

    # When the app's handler task is queued, and the app calls one of its own Celery tasks,
    # each in a one-off process of the worker service
    handler_task = int(
        deployment.run(
            "worker",
            ["celery-taskq", "enqueue", "myapp.handlers.RebuildSearchIndex", '{"documents": 20}'],
        )
    )
    deployment.run(
        "worker", ["python", "-c", "from myapp.tasks import add; print(add.delay(2, 3).id)"]
    )

    # Then the dashboard's API shows the handler task done by a runner of the app's worker
    task = finished_task(deployment, handler_task)
    assert task["runs"][-1]["results"] == {"indexed": 20}

    # And the native task audited: the call a task, its execution a run with the result
    def called() -> Any:
        page = get_json(f"{dashboard_api(deployment)}/tasks?handler=celery:myapp.tasks.add")
        return page["tasks"][0]["id"] if page["tasks"] else None

    native = finished_task(deployment, wait_until(called, "the native task", deployment))
    assert native["data"] == {"args": [2, 3], "kwargs": {}}
    [run] = native["runs"]
    assert run["results"] == 5
    # And the dashboard links the run to Flower's page of it, at the port Flower publishes
    flower = f"http://localhost:{deployment.network.ports['5555']}"
    assert run["flower_task_url"] == f"{flower}/task/{run['celery_task_id']}"
