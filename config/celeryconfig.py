"""Example Celery configuration for running celery_taskq inside a Celery app of your own.

Copy this file next to your code as ``celeryconfig.py``, adjust it, and load it in the app
that you give to :func:`celery_taskq.celery.install`, which reads the ``taskq_*`` keys::

    # myapp/celery.py
    from celery import Celery

    from celery_taskq.celery import install

    app = Celery("myapp")
    app.config_from_object("celeryconfig")
    install(app)  # event tasks, runner task, beat entries and signals

(``install()`` may come before ``config_from_object`` too: what it adds is added again when the
configuration is loaded and when a worker or beat starts.) Then start one beat and any number of
workers; each worker must consume your own queue(s) and, as this file declares them, both
celery_taskq queues::

    celery -A myapp worker -Q celery,taskq.events,taskq.runners --concurrency 4 --loglevel INFO
    celery -A myapp beat --loglevel INFO

No app of your own? ``celery-taskq worker --beat`` (or ``celery -A celery_taskq worker -B``)
runs a ready-made one, configured from ``TASKQ_*`` environment variables alone.

Where each celery_taskq setting comes from, first match wins: the environment variable
``TASKQ_<NAME>``, then the ``taskq_<name>`` key below, then the default in
:mod:`celery_taskq.core.settings`. Every ``taskq_*`` value below *is* that default: change the ones
you need and delete the rest.
"""

from kombu import Queue

# --- Broker and results ------------------------------------------------------------------------

# The broker only carries beat's ticks and the runner tasks; the TaskQueue, TaskRuns and
# TaskRunners tables remain the record of what was queued and what ran. Use Redis or RabbitMQ in
# production. Left unset, celery_taskq falls back to a broker needing no server: kombu's
# SQLAlchemy transport on a SQLite file ("sqla+sqlite:///celery_taskq-broker.db"); any
# "sqla+<database URL>" broker gets celery_taskq's faster-polling SQL transport.
broker_url = "redis://localhost:6379/0"

# Optional. celery_taskq's tasks store no results (TaskRuns is their record); configure a result
# backend only if your own tasks need one.
# result_backend = "redis://localhost:6379/1"

# --- Queues and routing ------------------------------------------------------------------------

# celery_taskq's tasks:
#
#   taskq.on_process, taskq.on_create_task_runners
#       beat's ticks (OnProcess, OnCreateTaskRunners): short tasks.
#   taskq.runner
#       sent only while handler runs are due, one per run no idle runner will take; it holds a
#       pool process while its runner works the queue, and leaves once the queue has been empty
#       for taskq_runner_max_idle seconds (or after taskq_runner_max_lifetime).
#
# install() adds no queue: left alone, these tasks ride your routing (task_routes, else the
# default queue), and your workers consume the queues they consumed before. Declaring
# celery_taskq's two queues, as below, gives its tasks queues of their own: ticks then never
# wait behind a backlog of your tasks. A worker started with no queue option (-Q) consumes every
# declared queue, and one given a queue option must name them:
#
#   celery -A myapp worker -Q celery,taskq.events,taskq.runners --concurrency 4 --loglevel INFO
#
# A worker that consumes none of the queues celery_taskq's tasks go to says so in its log, once.
task_queues = [Queue("celery"), Queue("taskq.events"), Queue("taskq.runners")]

# A worker holds at most concurrency - 1 runners, so one pool process stays free for the ticks
# and your own tasks. Your own routes and beat_schedule entries are kept, whether install() is
# called before or after this file is loaded:
#
# task_routes = {"myapp.tasks.*": {"queue": "celery"}}
#
# install() changes none of your Celery settings: your workers send the events, and reserve
# the messages, they did before (Flower turns workers' task events on by itself while it runs;
# set worker_send_task_events / task_send_sent_event here for `celery events` or a Flower
# started later). celery_taskq's own tasks send no events (Flower shows your work) unless
# taskq_internal_task_events is True.

# --- celery_taskq ------------------------------------------------------------------------------

# SQLAlchemy URL of the database holding TaskQueue, TaskRuns and TaskRunners (create or upgrade
# the tables with `celery-taskq db upgrade`). The default is a SQLite file in the working
# directory; for several hosts use a server, e.g.
# "postgresql+psycopg://taskq:secret@db.example.com:5432/taskq".
taskq_database_url = "sqlite:///celery_taskq.db"

# TaskRunnerLimit: most runners "running" at once, across all hosts and workers.
taskq_task_runner_limit = 8

# A runner leaves after its current run once its resident memory exceeds this many MiB.
taskq_runner_memory_limit_mb = 100

# Bytes kept of each of a run's stdout and stderr; the rest is cut and marked.
taskq_output_cap_bytes = 1024 * 1024

# Largest task data (as compact UTF-8 JSON, bytes) that enqueue, the CLI and HTTP accept.
taskq_task_data_max_bytes = 1024 * 1024

# Seconds an idle runner sleeps between claims (a Redis work notice wakes it sooner).
taskq_poll_interval = 0.1

# Seconds a run may work before it is stopped and ends "timeout" (0: no limit; a handler's
# time_limit attribute overrides it), and the grace after which an unstoppable handler's
# runner process is ended.
taskq_run_time_limit = 0.0
taskq_run_time_limit_grace = 10.0

# Runner heartbeat period, and the runner's lease (must be longer than the period): a runner
# holding a run ends its own process once its last stored heartbeat is this old.
taskq_heartbeat_interval = 10.0
taskq_heartbeat_timeout = 60.0

# Seconds past the lease before OnProcess takes the runs of a runner it cannot prove dead
# (another host or PID namespace); must exceed the clock difference between hosts.
taskq_lease_margin = 10.0

# Largest result (JSON bytes) a run may store; a larger one ends the run error/result_too_large.
taskq_result_max_bytes = 1024 * 1024

# Registered names or module prefixes; when not empty, only handlers equal to or under them
# can be enqueued or run. (A comma-separated string works too, as in
# TASKQ_ALLOWED_HANDLER_PREFIXES.)
taskq_allowed_handler_prefixes: tuple[str, ...] = ()
# taskq_allowed_handler_prefixes = ("myapp.tasks", "reports")

# Modules every process imports at start, so that their @register("name") handlers are known.
taskq_imports: tuple[str, ...] = ()
# taskq_imports = ("myapp.tasks",)

# Name recorded on this host's runner rows. Default: the machine's host name.
# taskq_hostname = "worker-1"

# Seconds between beat's OnProcess ticks (time out dead runners, create runs for due tasks).
taskq_process_interval = 2.0

# Seconds between beat's OnCreateTaskRunners ticks (send a runner task for each due handler run
# that no idle runner will take, within TaskRunnerLimit; none while nothing is due).
taskq_create_runners_interval = 5.0

# A runner task leaves after this many seconds without work (0: as soon as the queue is empty),
# handing its pool process back to your tasks...
taskq_runner_max_idle = 1.0
# ...and after this many seconds in all (once its current run is over), freeing the pool
# process; OnCreateTaskRunners sends a new runner task while handler runs are still due.
taskq_runner_max_lifetime = 600.0

# 0: the strict mode (one commit per run). From 1 to 1000 (PostgreSQL): the fast mode, where a
# runner reserves up to taskq_claim_batch_max runs at once and commits the outcomes of short
# runs together within this many milliseconds (a crash may make those runs run again).
taskq_group_commit_ms = 0
taskq_claim_batch_max = 50

# Retry backoff after a failed handler run: base * 2 ** (failures - 1) seconds, at most the
# maximum, varied by +/- jitter. A handler class may set retry_backoff_base/_max itself.
taskq_retry_backoff_base = 2.0
taskq_retry_backoff_max = 600.0
taskq_retry_jitter = 0.1

# Seconds a run may work before run.deadline (resumable handlers return Continue by then).
taskq_run_time_budget = 60.0

# Redis URL for live run-change notices; default the broker URL when it is Redis, "none": off.
# taskq_pubsub_url = "redis://localhost:6379/1"

# The broker of the ready-made app (`celery -A celery_taskq`, `celery-taskq worker`). In your
# own app set broker_url above instead; when broker_url is unset, install() applies this one.
# taskq_broker_url = "sqla+sqlite:///celery_taskq-broker.db"

# Whether Celery workers run handler tasks; False is audit-only mode: no runner task is sent at
# all and beat has no OnCreateTaskRunners entry (native tasks are still audited; handler tasks
# wait for a standalone `celery-taskq runner`).
taskq_handler_runners = True

# Whether beat's event ticks and runner tasks send Celery task events (Flower then shows them;
# off, Flower's task list holds only your tasks, and Celery's lines about them are DEBUG lines).
taskq_internal_task_events = False

# PostgreSQL only: the schema that holds the tables ("" : the connection's default schema).
taskq_db_schema = ""

# Seconds after its due time a published native task that never started is reported as possibly
# lost (never re-published unless asked: celery-taskq resend ID).
taskq_native_lost_after = 3600.0

# The dashboard's base URL as its users reach it: `celery-taskq -A <app> show` links each task
# to its page there (empty: no links).
taskq_dashboard_url = ""

# Seconds between the dashboard pages' in-place updates (0: pages stay as loaded); read by
# `celery-taskq -A <app> dashboard`.
taskq_dashboard_refresh_interval = 5.0

# A Celery worker's main process loads the database stack and freezes its heap before the pool
# forks, so pool processes share that memory (False: left as Celery starts it).
taskq_fork_preload = True

# The native audit's writes: handed to a background thread and committed in batches (True), or
# each committed before the task goes on (False). A batch holds at most taskq_audit_batch_size
# writes, gathered for at most taskq_audit_batch_window seconds after the first.
taskq_audit_write_behind = True
taskq_audit_batch_size = 200
taskq_audit_batch_window = 0.05

# How long finished rows are kept, e.g. "success=7d,error=90d" (keys: success, error, timeout,
# runners, ticks; ages like 45s, 90m, 12h, 30d, 2w). Empty: keep everything. OnProcess prunes by
# it, one batch of each kind a tick, at most taskq_retention_batch_size rows a statement (1 to
# 10000).
taskq_retention = ""
taskq_retention_batch_size = 2000

# Most runs of a queue or handler running at once, across hosts: "reports=2,handler:myapp.Export=1"
# (a bare name is a queue). Most runs started per period: "handler:myapp.Export=10/m" (units s, m,
# h, d). Declare the same in every process. Empty: no limit.
taskq_concurrency = ""
taskq_rate_limits = ""
