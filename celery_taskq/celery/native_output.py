"""What a native Celery task's attempt writes to stdout and stderr, for its run row.

:func:`start_capture` begins capturing for the current attempt; :meth:`OutputCapture.finish`
ends it and returns the text captured (capped to ``cap`` bytes per stream).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

from celery_taskq.core.runner.capture import CapturedOutput, capture_output


@dataclass
class OutputCapture:
    """The output of one attempt, being captured."""

    _stack: ExitStack
    _captured: CapturedOutput

    def finish(self) -> tuple[str, str]:
        """Stop capturing; ``(stdout, stderr)`` written during the attempt."""
        self._stack.close()
        return self._captured.stdout, self._captured.stderr


def start_capture(cap: int) -> OutputCapture:
    """Start capturing this process's stdout and stderr for one attempt."""
    stack = ExitStack()
    captured = stack.enter_context(capture_output(cap))
    return OutputCapture(stack, captured)
