"""`serve_in_background`: the emulator on the caller's event loop, as `demo` embeds it."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from processor.asgi import bind
from processor.emulator.config import EmulatorConfig
from processor.emulator.faults import Faults
from processor.emulator.server import serve_in_background

SESSION = "/api/v2/webchat/sessions/{}"
INDICATOR = {"status": "typing", "originatedAt": 1, "expiresAt": 2, "version": 1}


async def _token(client: httpx.AsyncClient, config: EmulatorConfig) -> str:
    credentials = config.clients[0]
    response = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(credentials.client_id, credentials.client_secret.get_secret_value()),
    )
    assert response.status_code == 200
    token: str = response.json()["access_token"]
    return token


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


async def test_serves_on_a_free_port_and_stops_cleanly() -> None:
    config = EmulatorConfig.single_client("embedded", "embedded-secret")
    async with serve_in_background(config) as running:
        assert running.port > 0
        assert _listening(running.port)
        running.emulator.store.create("s1")
        async with httpx.AsyncClient(base_url=running.base_url) as client:
            token = await _token(client, config)
            response = await client.get(
                SESSION.format("s1"), headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 200
            # the default start-up configuration limits at 300/minute
            assert response.headers["inin-ratelimit-allowed"] == "300"
    assert not _listening(running.port)


async def test_concurrent_patches_with_one_etag_let_exactly_one_through() -> None:
    config = EmulatorConfig.single_client(
        "embedded", "embedded-secret", Faults(rate_limit_per_minute=0, latency_ms=5, jitter_ms=5)
    )
    async with (
        serve_in_background(config) as running,
        httpx.AsyncClient(base_url=running.base_url) as client,
    ):
        etag = running.emulator.store.create("s1").etag
        token = await _token(client, config)
        headers = {"Authorization": f"Bearer {token}", "If-Match": etag}
        body = {"customAttributes": {"typingIndicator": INDICATOR}}
        responses = await asyncio.gather(
            *(client.patch(SESSION.format("s1"), json=body, headers=headers) for _ in range(20))
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] + [412] * 19
        assert len(running.emulator.store.get("s1").history) == 1


async def test_history_keeps_the_configured_changes_per_session_and_says_what_it_dropped() -> None:
    config = EmulatorConfig(history_kept=2)
    async with (
        serve_in_background(config) as running,
        httpx.AsyncClient(base_url=running.base_url) as client,
    ):
        for session_id in ("s1", "s2"):
            created = await client.post("/emulator/sessions", json={"session_id": session_id})
            assert created.status_code == 201
        for indicator in (INDICATOR, None, INDICATOR):
            changed = await client.patch(
                "/emulator/sessions/s1", json={"custom_attributes": {"typingIndicator": indicator}}
            )
            assert changed.status_code == 200
        body = (await client.get("/emulator/sessions/s1/history")).json()
        assert [h["typing_indicator"] for h in body["history"]] == [None, INDICATOR]
        assert body["dropped"] == 1
        untouched = (await client.get("/emulator/sessions/s2/history")).json()
        assert (untouched["history"], untouched["dropped"]) == ([], 0)
        # a reset starts again with the configured cap
        assert (await client.post("/emulator/reset")).status_code in (200, 204)
        assert running.emulator.store.history_kept == 2


async def test_a_taken_port_fails_fast() -> None:
    async with serve_in_background(EmulatorConfig()) as running:
        with pytest.raises(OSError, match="in use"):
            async with serve_in_background(EmulatorConfig(), port=running.port):
                pass


async def test_served_connections_send_without_nagle_delay() -> None:
    # asyncio turns Nagle off only on sockets that say they are TCP; accepted connections
    # inherit the listening socket's `proto`. With Nagle on, every response waits for the
    # client's delayed ACK (40 ms a request).
    sock = bind("127.0.0.1", 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn: socket.socket = writer.get_extra_info("socket")
        accepted.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_connect, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        assert await asyncio.wait_for(accepted, timeout=10) != 0
        writer.close()
