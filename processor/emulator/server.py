"""Running the emulator with uvicorn: embedded in an asyncio program, or as the CLI.

`serve_in_background` shares the caller's event loop (the `demo` command embeds the
emulator next to the processor); `run` owns the process and its signals (the CLI).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn

from processor.asgi import Listening, bind
from processor.asgi import serve_in_background as embedded
from processor.emulator.app import Emulator, create_app
from processor.emulator.config import EmulatorConfig


@dataclass(frozen=True, slots=True)
class RunningEmulator:
    """A started emulator: where it listens, and its state for in-process inspection."""

    host: str
    port: int
    emulator: Emulator

    @property
    def base_url(self) -> str:
        """Serves the API, `/oauth/token` and `/emulator/...` alike."""
        return Listening(self.host, self.port).base_url


# Genesys closes idle keep-alive connections too; a client must cope with it.
_KEEP_ALIVE_S = 30


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
    async with embedded(
        app,
        host,
        port,
        name="emulator",
        start_timeout_s=start_timeout_s,
        log_level=log_level,
        timeout_keep_alive=_KEEP_ALIVE_S,
    ) as listening:
        yield RunningEmulator(listening.host, listening.port, app.state.emulator)


def run(
    config: EmulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8787,
    *,
    log_level: str = "warning",
) -> None:
    """Serve the emulator until SIGINT/SIGTERM (blocking; the CLI's `emulator`)."""
    app = create_app(config)
    sock = bind(host, port)
    bound = int(sock.getsockname()[1])
    sys.stdout.write(f"Genesys Cloud emulator listening on {Listening(host, bound).base_url}\n")
    sys.stdout.flush()
    uv_config = uvicorn.Config(
        app,
        host=host,
        port=bound,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_keep_alive=_KEEP_ALIVE_S,
    )
    try:
        uvicorn.Server(uv_config).run(sockets=[sock])
    finally:
        sock.close()
