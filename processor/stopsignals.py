"""SIGTERM and SIGINT from the first moment of a long-running command (`run`, `crm-webhook`).

A SIGTERM that came while the process was still reading its configuration or connecting
would end it at once (exit 143), or be lost where the command is PID 1 (the kernel drops a
signal whose disposition PID 1 left at the default; the image runs dumb-init as PID 1 for
the interpreter's own start-up). `catch_stop_signals()`, called before anything slow,
records such a signal; the command installs its own handlers once its event loop runs and
starts stopped when `take_stop_request()` says a signal came before them.
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: list[int] = []


def _record(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


def catch_stop_signals() -> None:
    """Record SIGTERM and SIGINT until the command's own handlers replace this."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _record)


def take_stop_request() -> bool:
    """True when a stop signal came since `catch_stop_signals` (once: it is then forgotten)."""
    requested = bool(_received)
    _received.clear()
    return requested
