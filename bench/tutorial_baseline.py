"""The tutorial's approach (`TypingIndicatorManager`), as the baseline the processor must beat.

Faithful to the reference script, made async only so that it can run beside the demo
stack: events are handled one at a time in arrival order; each one not suppressed by the
session:status cache (1500 ms) costs a GET then a PATCH with `If-Match`; a 429 sleeps for
its `Retry-After` and retries (three times), blocking everything behind it; a 412 gives up;
every update appends `(session, expiresAt)` to a fixed list that a cleanup loop polls each
second, sending a GET and a clear for each expired entry even when a newer update came
since. `stopped` is sent as a clear at once (the script has no stop; this is the charitable
reading).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer
from rich.console import Console

from processor.settings import Settings

SUPPRESSION_WINDOW_MS = 1500
DEFAULT_TIMEOUT_MS = 5000


class TutorialManager:
    """`TypingIndicatorManager` of the reference, against the emulator."""

    def __init__(self, http: httpx.AsyncClient, client_id: str, client_secret: str) -> None:
        self._http = http
        self._client_id = client_id
        self._client_secret = client_secret
        self._token = ""
        self._token_expiry = 0.0
        self.suppression_cache: dict[str, int] = {}
        self.pending_expirations: list[tuple[str, int]] = []
        self.counters: dict[str, int] = {"events": 0, "updates": 0, "clears": 0, "errors": 0}

    async def token(self) -> str:
        loop = asyncio.get_running_loop()
        if self._token and loop.time() < self._token_expiry:
            return self._token
        response = await self._http.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._client_secret,
            },
        )
        response.raise_for_status()
        body = response.json()
        self._token = body["access_token"]
        self._token_expiry = loop.time() + body["expires_in"] - 30
        return self._token

    async def _headers(self, etag: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {await self.token()}", "Accept": "application/json"}
        if etag is not None:
            headers["If-Match"] = etag
        return headers

    async def validate_session(self, session_id: str) -> tuple[str, str]:
        """(state, etag) from a GET, as the script's `validate_session`."""
        response = await self._http.get(
            f"/api/v2/webchat/sessions/{session_id}", headers=await self._headers()
        )
        response.raise_for_status()
        body = response.json()
        return body["state"], body["etag"]

    async def _patch(self, session_id: str, indicator: dict[str, Any] | None) -> None:
        _, etag = await self.validate_session(session_id)
        payload = {"customAttributes": {"typingIndicator": indicator}}
        for _ in range(3):
            response = await self._http.patch(
                f"/api/v2/webchat/sessions/{session_id}",
                json=payload,
                headers=await self._headers(etag),
            )
            if response.status_code == 429:
                await asyncio.sleep(int(response.headers.get("Retry-After", 2)))
                continue
            if response.status_code == 412:
                raise RuntimeError("optimistic locking conflict")
            response.raise_for_status()
            return
        raise RuntimeError("max retries exceeded")

    async def update_indicator(self, session_id: str, status: str, timeout_ms: int) -> None:
        now = _now_ms()
        key = f"{session_id}:{status}"
        if now - self.suppression_cache.get(key, 0) < SUPPRESSION_WINDOW_MS:
            return
        expires = now + timeout_ms
        indicator = {"status": status, "originatedAt": now, "expiresAt": expires, "version": 1}
        await self._patch(session_id, indicator)
        self.suppression_cache[key] = now
        self.pending_expirations.append((session_id, expires))
        self.counters["updates"] += 1

    async def clear(self, session_id: str) -> None:
        await self._patch(session_id, None)
        self.counters["clears"] += 1

    async def handle(self, event: dict[str, Any]) -> None:
        self.counters["events"] += 1
        try:
            if event["status"] == "stopped":
                await self.clear(event["session_id"])
            else:
                timeout = event.get("timeout_ms") or DEFAULT_TIMEOUT_MS
                await self.update_indicator(event["session_id"], event["status"], timeout)
        except (RuntimeError, httpx.HTTPError):
            self.counters["errors"] += 1

    async def cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)  # the script's polling period
            now = _now_ms()
            expired = [entry for entry in self.pending_expirations if now >= entry[1]]
            for entry in expired:
                self.pending_expirations.remove(entry)
                try:
                    await self.clear(entry[0])
                except (RuntimeError, httpx.HTTPError):
                    self.counters["errors"] += 1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@contextlib.asynccontextmanager
async def tutorial_approach(settings: Settings, console: Console) -> AsyncIterator[dict[str, Any]]:
    """The tutorial's approach as the demo's system under test."""
    counters: dict[str, Any] = {}
    genesys = settings.genesys
    consumer = AIOKafkaConsumer(
        settings.typing.input_topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=f"{settings.typing.group_id}-tutorial",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        fetch_max_wait_ms=settings.typing.fetch_max_wait_ms,
    )
    async with httpx.AsyncClient(base_url=genesys.resolved_api_url, timeout=10) as http:
        manager = TutorialManager(
            http, genesys.oauthclient_id, genesys.oauthclient_secret.get_secret_value()
        )
        await consumer.start()
        try:
            async with asyncio.timeout(60):
                while not consumer.assignment():
                    await consumer.getmany(timeout_ms=200)
            console.print("tutorial's approach ready")

            async def consume() -> None:
                while True:
                    batches = await consumer.getmany(timeout_ms=200)
                    for records in batches.values():
                        for record in records:
                            await manager.handle(orjson.loads(record.value))

            tasks = [asyncio.create_task(consume()), asyncio.create_task(manager.cleanup_loop())]
            try:
                yield counters
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await consumer.stop()
    counters.update(
        events=manager.counters["events"],
        dead_letters=0,
        crm_records=0,
        audit_records=0,
        changelog_records=0,
        decisions={"errors": manager.counters["errors"]},
        calls={
            "set": manager.counters["updates"],
            "refresh": 0,
            "clear": manager.counters["clears"],
        },
    )
