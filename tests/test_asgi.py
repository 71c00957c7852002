"""`serve_in_background`: an ASGI app on the caller's event loop, for a block."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from processor.asgi import ServerStartError, serve_in_background

Scope = dict[str, Any]


async def _no_database(scope: Scope, receive: Any, send: Any) -> None:
    """An app whose start-up fails (lifespan)."""
    assert scope["type"] == "lifespan"
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "no database"})


async def test_a_server_whose_start_up_fails_raises_and_leaves_the_host_running() -> None:
    """uvicorn ends a failed start-up with `sys.exit`: inside a task, that would stop the
    host's event loop (and the host) instead of failing the block."""
    with pytest.raises(ServerStartError, match="broken server failed during start-up"):
        async with serve_in_background(_no_database, lifespan="on", name="broken"):
            pass


async def test_stopping_cancels_a_handler_that_never_returns() -> None:
    """A handler hung on something that never answers must not outlive the server: after
    the stop's grace it is cancelled, and the block ends once it has ended."""
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def hangs(scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        started.set()
        try:
            await asyncio.Event().wait()  # nothing ever sets it
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with httpx.AsyncClient(timeout=30) as client:
        async with serve_in_background(hangs) as listening:
            request = asyncio.create_task(client.get(f"{listening.base_url}/hang"))
            async with asyncio.timeout(10):
                await started.wait()
        assert cancelled.is_set()
        # uvicorn answers a request whose handler failed before responding with a 500
        async with asyncio.timeout(10):
            answer = await request
    assert answer.status_code == 500
