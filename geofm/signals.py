"""Ctrl-C and ``kill``: stop the command promptly, clean up, exit 130 or 143.

:func:`handle_signals` makes SIGINT and SIGTERM raise :class:`Interrupted` in the main thread,
so every ``with``/``finally`` on the way out runs (temporary outputs are removed). The
exception arrives when the main thread next runs Python code: ``geofm predict`` runs the model
in worker threads and waits on events, so it stops within a fraction of a second even inside a
long model call. A second signal while cleaning up exits at once; what it leaves behind is
recognised by name and removed by the next run to the same output
(:func:`geofm.io.cog.remove_stale_temporaries`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; :attr:`exit_code` is ``128 + signal number``."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)


@contextmanager
def handle_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread
    (once; a second signal exits immediately). Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def raise_once(signum: int, frame: FrameType | None) -> None:
        if received:  # already cleaning up: the user insists
            sys.stderr.flush()
            os._exit(128 + signum)
        received.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, raise_once) for s in HANDLED}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
