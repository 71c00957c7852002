"""Child processes that serve on a loopback port (the local broker, the emulator).

They die with their parent (Linux `PR_SET_PDEATHSIG`), so a crashed test run or demo leaves
no broker or emulator behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import IO, Self


class ChildStartError(Exception):
    """A child process did not start listening."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout_s: float, alive: Callable[[], bool] = lambda: True
) -> bool:
    """Poll until something accepts TCP connections on `host:port`, or the deadline; False
    at once when `alive()` says the process that should listen there is gone."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            # another process may have taken the port meanwhile: only a live child counts
            return alive()
        time.sleep(0.05)
    return False


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM us when the parent dies."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class ListeningChild:
    """A child process serving on `host:port`; subclasses say what to run in `start`."""

    name = "child process"

    def __init__(self, host: str, port: int | None, log: IO[bytes] | None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Process id while it runs."""
        return self._process.pid if self._process else None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the child and wait until it accepts connections."""
        raise NotImplementedError

    def _spawn(self, command: Sequence[str], env: Mapping[str, str], timeout_s: float) -> None:
        sink = self._log if self._log is not None else subprocess.DEVNULL
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv of our own programs
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            env=dict(env),
            preexec_fn=_die_with_parent,  # the child has no threads yet: preexec is safe
        )
        process = self._process
        if not wait_for_port(self.host, self.port, timeout_s, lambda: process.poll() is None):
            code = process.poll()
            self.stop()
            raise ChildStartError(
                f"{self.name} did not listen on {self.host}:{self.port} (exit {code})"
            )

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`; always reaps the child."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
