"""Every state change of the three tables, as named set-based statements, one home each.

Each function takes an open connection and runs inside the caller's transaction (or, where a
statement is the whole change, in autocommit), so a run's status, its queue roll-up and its
runner link always land together (DESIGN §3.7):

* :mod:`~celery_taskq.core.statements.claim` — the claim, and a success recorded with the next
  claim;
* :mod:`~celery_taskq.core.statements.runs` — a run's progress, checkpoint and final state;
* :mod:`~celery_taskq.core.statements.tasks` — queue rows: insert, roll-up, runs created,
  cancel;
* :mod:`~celery_taskq.core.statements.runners` — runner rows: registration, heartbeat, end,
  time-out;
* :mod:`~celery_taskq.core.statements.beat` — one beat tick per time slot;
* :mod:`~celery_taskq.core.statements.native` — runs of audited native Celery tasks.
"""
