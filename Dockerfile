# syntax=docker/dockerfile:1
# One image for every celery_taskq process: `celery-taskq db upgrade`, `celery-taskq worker`,
# `celery -A celery_taskq beat`, `celery -A celery_taskq flower` and `celery-taskq dashboard`
# (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A non-root account; /var/lib/celery_taskq holds beat's schedule file (a volume in compose,
# which takes this directory's owner when Docker first creates it).
RUN groupadd --system taskq \
    && useradd --system --gid taskq --create-home --home-dir /home/taskq taskq \
    && install --directory --owner taskq --group taskq /var/lib/celery_taskq

# Only what the build needs (.dockerignore keeps the rest of the context out). The extras: the
# PostgreSQL driver, the dashboard and Flower; the base install brings the Redis transport.
# tests/test_deploy_path.py installs with this very line in a fresh venv and runs the compose
# services' commands on it.
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY celery_taskq ./celery_taskq
RUN pip install ".[postgres,web,flower]"

USER taskq
WORKDIR /home/taskq

# Compose gives every service its own command; run alone, the image prints the CLI's help.
CMD ["celery-taskq", "--help"]
