"""The core: the three tables and their rules, with no Celery, command line or web in it.

* :mod:`~celery_taskq.core.models` — the tables, status enums and named constraints;
* :mod:`~celery_taskq.core.storage` — the engine, transactions, dialects and the driver;
* :mod:`~celery_taskq.core.statements` — every state change, as a named statement;
* :mod:`~celery_taskq.core.queue` and :mod:`~celery_taskq.core.overseer` — the queue service;
* :mod:`~celery_taskq.core.runner` — the runner loop, output capture, liveness, time limits;
* :mod:`~celery_taskq.core.handlers`, :mod:`~celery_taskq.core.registry`,
  :mod:`~celery_taskq.core.loading` and :mod:`~celery_taskq.core.context` — what handlers are
  and what they get;
* :mod:`~celery_taskq.core.intake` — checking what is asked for before anything is written;
* :mod:`~celery_taskq.core.settings` and :mod:`~celery_taskq.core.exceptions`.

Nothing here imports Celery, kombu, click, FastAPI or Starlette, nor the layers built on the
core (:mod:`celery_taskq.celery`, :mod:`celery_taskq.reports`, :mod:`celery_taskq.web`,
:mod:`celery_taskq.cli`); ``tests/test_layers.py`` checks it.
"""
