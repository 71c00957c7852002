"""Running the emulator with uvicorn: embedded in an asyncio program, or as the CLI.

`serve_in_background` shares the caller's event loop (the `demo` command embeds the
emulator next to the processor); `run` owns the process and its signals (the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

from processor.emulator.app import Emulator, create_app
from processor.emulator.config import EmulatorConfig


class EmulatorStartError(Exception):
    """The emulator did not start listening in time."""


@dataclass(frozen=True, slots=True)
class RunningEmulator:
    """A started emulator: where it listens, and its state for in-process inspection."""

    host: str
    port: int
    emulator: Emulator

    @property
    def base_url(self) -> str:
        """Serves the API, `/oauth/token` and `/emulator/...` alike."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves the host program's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The embedding program owns SIGINT/SIGTERM and stops us through `should_exit`.
        yield


def _uvicorn_config(app: Starlette, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        # no lifespan events to run; skipping them saves start-up time and a task
        lifespan="off",
        server_header=False,
        # Genesys closes idle keep-alive connections too; a client must cope with it.
        timeout_keep_alive=30,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@contextlib.asynccontextmanager
async def serve_in_background(
    config: EmulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    start_timeout_s: float = 10.0,
    log_level: str = "warning",
) -> AsyncIterator[RunningEmulator]:
    """Serve the emulator on the running event loop for the duration of the block.

    `port=0` picks a free port; the bound one is `RunningEmulator.port`. The server is
    listening when the block starts and fully stopped when it ends.
    """
    app = create_app(config)
    sock = _bind(host, port)
    bound_port = int(sock.getsockname()[1])
    server = _EmbeddedServer(_uvicorn_config(app, host, bound_port, log_level))
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"emulator:{bound_port}")
    try:
        deadline = asyncio.get_running_loop().time() + start_timeout_s
        # uvicorn exposes no start event; watch its flag (and the task, which ends on failure)
        while not server.started:
            if task.done():
                task.result()
                raise EmulatorStartError(f"emulator stopped during start-up on port {bound_port}")
            if asyncio.get_running_loop().time() > deadline:
                raise EmulatorStartError(f"emulator did not start within {start_timeout_s} s")
            await asyncio.sleep(0.005)
        yield RunningEmulator(host=host, port=bound_port, emulator=app.state.emulator)
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=5.0)
        except TimeoutError:
            server.force_exit = True
            await task
        finally:
            sock.close()


def run(
    config: EmulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8787,
    *,
    log_level: str = "warning",
) -> None:
    """Serve the emulator until SIGINT/SIGTERM (blocking; the CLI's `emulator`)."""
    app = create_app(config)
    sock = _bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    sys.stdout.write(
        f"Genesys Cloud emulator listening on http://{shown}:{sock.getsockname()[1]}\n"
    )
    sys.stdout.flush()
    uv_config = _uvicorn_config(app, host, int(sock.getsockname()[1]), log_level)
    try:
        uvicorn.Server(uv_config).run(sockets=[sock])
    finally:
        sock.close()
