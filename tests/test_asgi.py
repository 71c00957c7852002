"""`serve_in_background`: an ASGI app on the caller's event loop, for a block."""

from __future__ import annotations

from typing import Any

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
