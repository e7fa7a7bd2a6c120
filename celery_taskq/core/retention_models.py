"""The retention's tables: what pruning deleted, for the metrics (on ``models.Base``)."""

from __future__ import annotations
