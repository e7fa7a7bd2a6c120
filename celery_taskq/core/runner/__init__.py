"""The task runner: the loop that claims runs, executes their handlers and records them.

* :mod:`~celery_taskq.core.runner.loop` — :class:`~celery_taskq.core.runner.loop.TaskRunner` and
  its exits;
* :mod:`~celery_taskq.core.runner.recording` — claims and recording, waiting out outages;
* :mod:`~celery_taskq.core.runner.execution` — one handler run, and its outcome;
* :mod:`~celery_taskq.core.runner.heartbeat`, :mod:`~celery_taskq.core.runner.lease` and
  :mod:`~celery_taskq.core.runner.liveness` — a runner proving it is alive, and being judged;
* :mod:`~celery_taskq.core.runner.capture` — a run's stdout and stderr, at the descriptors;
* :mod:`~celery_taskq.core.runner.time_limit` and :mod:`~celery_taskq.core.runner.stop_points`
  — stopping a run that overruns;
* :mod:`~celery_taskq.core.runner.outcome`, :mod:`~celery_taskq.core.runner.outcome_values`
  and :mod:`~celery_taskq.core.runner.backoff` — what a run ends with, and when it is retried.
"""
