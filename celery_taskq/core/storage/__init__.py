"""Storage: the engine and its transactions, what differs between the two databases, and the
driver's fast path. No state change is written here: those are :mod:`celery_taskq.core.statements`.
"""
