"""``python -m celery_taskq.cli`` runs the ``celery-taskq`` command."""

import sys

from celery_taskq.cli import main

sys.exit(main())
