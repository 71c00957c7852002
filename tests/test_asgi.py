"""`serve_in_background`: an ASGI app on the caller's event loop, for a block."""

from __future__ import annotations

import asyncio
import logging
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


ASGI_ERROR = "Exception in ASGI application"


def _asgi_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.getMessage().startswith(ASGI_ERROR)
    ]


async def test_stopping_cancels_a_handler_that_never_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler hung on something that never answers must not outlive the server: after
    the stop's grace it is cancelled, and the block ends once it has ended. The request
    is answered 503, and the cancellation, expected at a stop, is logged as no error."""
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
        async with asyncio.timeout(10):
            answer = await request
    assert answer.status_code == 503
    assert answer.text == "stopping\n"
    assert _asgi_errors(caplog) == []


async def test_a_failing_handler_is_still_logged_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only the stop's cancellation is quiet: an exception out of a handler is an error,
    logged with its traceback, and uvicorn answers 500."""

    async def fails(scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        raise RuntimeError("handler bug")

    async with (
        httpx.AsyncClient(timeout=30) as client,
        serve_in_background(fails) as listening,
    ):
        answer = await client.get(f"{listening.base_url}/fail")
    assert answer.status_code == 500
    [record] = _asgi_errors(caplog)
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


async def test_a_cancellation_raised_inside_a_handler_is_still_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A `CancelledError` that is not the stop's (an awaited task of the handler's that was
    cancelled) is an application error like any other."""

    async def awaits_a_cancelled_task(scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        inner = asyncio.ensure_future(asyncio.Event().wait())
        inner.cancel()
        await inner

    async with (
        httpx.AsyncClient(timeout=30) as client,
        serve_in_background(awaits_a_cancelled_task) as listening,
    ):
        answer = await client.get(f"{listening.base_url}/cancelled")
    assert answer.status_code == 500
    assert len(_asgi_errors(caplog)) == 1
