"""Chaos tests: real processes and real servers killed, stopped and restarted, in bounded time."""
