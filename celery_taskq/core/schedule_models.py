"""The schedules' tables: periodic handler tasks and the slots they fired (on ``models.Base``)."""

from __future__ import annotations
