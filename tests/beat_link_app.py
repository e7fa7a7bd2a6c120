"""``tests/native_app.py``'s app with a ``beat_schedule`` entry of its own, for a real beat
(``tests/test_native_outcomes.py``): ``native.add`` every second, with a header of its own."""

from __future__ import annotations

from tests.native_app import app

BEAT_ENTRY = "add every second"

app.conf.beat_schedule = {
    BEAT_ENTRY: {
        "task": "native.add",
        "schedule": 1.0,
        "args": (2, 3),
        "options": {"headers": {"x-own": "kept"}},
    }
}
