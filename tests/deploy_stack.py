"""The deploy path of docker-compose.yml and the Dockerfile, done without Docker.

What a container would do is done on this machine instead (:mod:`tests.test_deploy_path`):

- **The image.** A fresh venv (no dev extras) gets what the Dockerfile's ``COPY`` lines copy,
  and its ``RUN pip install`` line is run there, as it is written, from that copy.
- **The services.** Their own commands (``command``, and the image's defaults) run with their
  own ``environment``, read from docker-compose.yml as compose reads it
  (:mod:`tests.test_compose`).
- **The network.** What compose's network and port publishing provide is the one thing
  translated: a service's host name and port (``postgres:5432``) become the local server's
  address, a published container port a free local port, ``0.0.0.0`` the loopback, a volume's
  mount point a directory of the test, and ``HOSTNAME`` this machine's host name.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.test_compose import (
    COMPOSE_FILE,
    compose_services,
    dockerfile_path,
    environment_of,
    image_defaults,
    service_argv,
)

WAIT_SECONDS = 90.0
LOOPBACK = "127.0.0.1"


# --- The image: the Dockerfile's copies and install line, in a fresh venv ---------------------


@dataclass(frozen=True)
class ImageRecipe:
    """What the Dockerfile does that a test can do: its ENV, COPY, install and WORKDIR."""

    environment: dict[str, str]
    copies: list[tuple[list[str], str]]
    """(sources in the build context, destination inside the build's WORKDIR)"""
    install: list[str]
    """The argv of the one ``RUN pip install`` line."""
    build_workdir: str
    workdir: str
    """The WORKDIR the services run in."""


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        instruction, _, arguments = whole.partition(" ")
        instructions.append((instruction.upper(), arguments.strip()))
    return instructions


def read_image_recipe(dockerfile: Path) -> ImageRecipe:
    """The recipe of ``dockerfile``; it must install with exactly one ``pip install`` line."""
    environment: dict[str, str] = {}
    copies: list[tuple[list[str], str]] = []
    installs: list[tuple[list[str], str]] = []
    workdir = "/"
    for instruction, arguments in dockerfile_instructions(dockerfile.read_text()):
        if instruction == "ENV":
            pairs = (word.partition("=") for word in shlex.split(arguments))
            environment.update({name: value for name, _, value in pairs})
        elif instruction == "WORKDIR":
            workdir = arguments
        elif instruction == "COPY":
            *sources, destination = shlex.split(arguments)
            copies.append((sources, destination))
        elif instruction == "RUN" and "pip install" in arguments:
            installs.append((shlex.split(arguments), workdir))
    assert len(installs) == 1, f"expected one RUN pip install line, found {len(installs)}"
    install, build_workdir = installs[0]
    return ImageRecipe(environment, copies, install, build_workdir, workdir)


def extras_of(install: list[str]) -> set[str]:
    """The extras a ``pip install ".[a,b]"`` argv asks for."""
    targets = [word for word in install[2:] if not word.startswith("-")]
    assert len(targets) == 1, f"the install line names {targets}, not one target"
    match = re.fullmatch(r"\.\[([\w,\s-]+)\]", targets[0])
    assert match is not None, f"{targets[0]!r} is not the working tree with extras"
    return {extra.strip() for extra in match.group(1).split(",")}


@dataclass(frozen=True)
class Image:
    """The installed image: its venv's programs, its ENV, and the directory to run in."""

    recipe: ImageRecipe
    bin: Path
    root: Path


def build_context() -> Path:
    """The build context of the compose file's ``build``."""
    build = next(service["build"] for service in compose_services().values() if "build" in service)
    context = build if isinstance(build, str) else build.get("context", ".")
    return (COMPOSE_FILE.parent / context).resolve()


def install_image(recipe: ImageRecipe, root: Path) -> Image:
    """Do in ``root`` what the recipe does: copy from the build context, make a fresh venv and
    run the install line, as it is written, in the copy."""
    build_dir = root / recipe.build_workdir.lstrip("/")
    build_dir.mkdir(parents=True)
    context = build_context()
    for sources, destination in recipe.copies:
        target = build_dir / destination
        for source in sources:
            path = context / source
            if path.is_dir():
                shutil.copytree(
                    path,
                    target if len(sources) == 1 else target / path.name,
                    ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]"),
                )
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    environ = {
        name: value
        for name, value in os.environ.items()
        if name not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    }
    environ.update(recipe.environment)
    # pip's cache only saves downloads: what gets installed is the same.
    environ.pop("PIP_NO_CACHE_DIR", None)
    environ["PATH"] = f"{venv / 'bin'}{os.pathsep}{environ.get('PATH', '')}"
    result = subprocess.run(
        recipe.install,
        cwd=build_dir,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"{shlex.join(recipe.install)} failed:\n{result.stderr}"
    home = root / recipe.workdir.lstrip("/")
    home.mkdir(parents=True, exist_ok=True)
    return Image(recipe=recipe, bin=venv / "bin", root=root)


# --- The network: service names, published ports and volumes, here --------------------------


@dataclass
class Network:
    """What compose's network, port publishing and volumes provide, as local equivalents."""

    services: dict[str, str] = field(default_factory=dict)
    """``name:port`` inside compose's network → ``127.0.0.1:port`` of the local server."""
    ports: dict[str, str] = field(default_factory=dict)
    """A container port a service publishes → the free local port it listens on here."""
    mounts: dict[str, str] = field(default_factory=dict)
    """A volume's mount point → the test's directory for it."""

    def translate(self, text: str) -> str:
        """``text`` with every address and mount point replaced by its local equivalent."""
        for container, local in self.ports.items():
            text = re.sub(rf"(?<!\d){container}(?!\d)", local, text)
        for address, local in self.services.items():
            text = re.sub(rf"(?<=[@/]){re.escape(address)}\b", local, text)
        for mount, local in self.mounts.items():
            text = text.replace(mount, local)
        return text.replace("0.0.0.0", LOOPBACK)  # noqa: S104 - what a container listens on


def published_ports(services: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The container ports the services publish."""
    return [
        str(mapping).rsplit(":", 1)[-1]
        for service in services.values()
        for mapping in service.get("ports") or []
    ]


# --- Running the services ---------------------------------------------------------------------


@dataclass
class Deployment:
    """The app services of the compose file, running on the image in one directory."""

    image: Image
    network: Network
    home: Path
    operator_environment: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def services(self) -> dict[str, dict[str, Any]]:
        """The compose services, read with the operator's variables."""
        return compose_services(self.operator_environment)

    def environment(self, service: str) -> dict[str, str]:
        """What a process of ``service`` sees: the image's ENV, then the service's own."""
        own = {
            name: self.network.translate(value)
            for name, value in environment_of(self.services()[service]).items()
        }
        return {
            "PATH": f"{self.image.bin}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "HOSTNAME": socket.gethostname(),
            "LANG": "C.UTF-8",
            **self.image.recipe.environment,
            **own,
        }

    def argv(self, service: str) -> list[str]:
        """The service's command (the image's defaults where it sets none), translated."""
        services = self.services()
        defaults = image_defaults(dockerfile_path(services))
        return [self.network.translate(part) for part in service_argv(services[service], defaults)]

    def log(self, service: str) -> str:
        """What a service has printed."""
        return (self.home / f"{service}.log").read_text(errors="replace")

    def logs(self) -> str:
        """Every service's output, for a failure message."""
        return "\n".join(f"--- {name}:\n{self.log(name)[-4000:]}" for name in self.processes)

    def run(self, service: str, argv: list[str]) -> str:
        """``docker compose run --rm service argv``: a one-off command; its output."""
        result = subprocess.run(
            argv,
            cwd=self.home,
            env=self.environment(service),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}\n{self.logs()}"
        return result.stdout

    def start(self, service: str) -> None:
        """Start a long-running service."""
        with (self.home / f"{service}.log").open("wb") as log:
            self.processes[service] = subprocess.Popen(
                self.argv(service),
                cwd=self.home,
                env=self.environment(service),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def healthy(self, service: str) -> bool:
        """Whether the service's own healthcheck passes (it must still be running)."""
        process = self.processes[service]
        assert process.poll() is None, f"{service} exited:\n{self.log(service)}"
        test = [str(part) for part in self.services()[service]["healthcheck"]["test"]]
        kind, rest = test[0], test[1:]
        argv = ["/bin/sh", "-c", " ".join(rest)] if kind == "CMD-SHELL" else rest
        result = subprocess.run(
            [self.network.translate(part) for part in argv],
            cwd=self.home,
            env=self.environment(service),
            capture_output=True,
            timeout=60,
            check=False,
        )
        return result.returncode == 0

    def stop(self) -> None:
        """SIGTERM every service, as ``docker compose down`` does; SIGKILL what outlives it."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


def wait_until(condition: Callable[[], Any], what: str, deployment: Deployment) -> Any:
    """Poll ``condition`` until it returns something true; fail with the logs after a while."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"{what} within {WAIT_SECONDS} s\n{deployment.logs()}")


# --- Talking to the dashboard and Flower ------------------------------------------------------


def get_json(url: str, *, auth: str | None = None) -> Any:
    """GET ``url`` (on this machine) as JSON, with basic auth ``user:password`` if given."""
    assert url.startswith(f"http://{LOOPBACK}:"), url
    request = urllib.request.Request(url)  # noqa: S310 - the loopback, checked above
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.load(response)


def documented_one_off_commands() -> list[tuple[str, list[str]]]:
    """The ``docker compose run --rm SERVICE ...`` commands of the compose file's header."""
    found = re.findall(r"^#\s+docker compose run --rm (\S+) (.+)$", COMPOSE_FILE.read_text(), re.M)
    return [(service, shlex.split(command)) for service, command in found]
