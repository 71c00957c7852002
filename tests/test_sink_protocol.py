"""Answers the emulator never gives (it bumps the ETag on every state change, so a PATCH
with a current ETag never meets a 409): the sink's mapping of them, over an in-memory
transport that scripts the responses."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from pydantic import SecretStr

from processor.clock import ManualClock
from processor.domain import Indicator, Outcome, Status
from processor.sink import GenesysSink, SinkConfig

Script = Callable[[httpx.Request], httpx.Response]

CONFIG = SinkConfig(
    api_url="https://api.example.test",
    login_url="https://login.example.test",
    client_id="id",
    client_secret=SecretStr("secret"),
    backoff_base_s=0.001,
    backoff_cap_s=0.002,
)
SESSION = {"id": "s1", "state": "connected", "etag": "e1", "customAttributes": {}}


def token_or(script: Script) -> Script:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return script(request)

    return handle


async def apply_with(script: Script, clock: ManualClock | None = None) -> tuple[Outcome, int]:
    clock = clock or ManualClock()
    desired = Indicator(Status.TYPING, clock.now_ms(), clock.now_ms() + 60_000, 1)
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(token_or(script))) as http,
        GenesysSink(CONFIG, http=http, clock=clock) as sink,
    ):
        result = await sink.apply("s1", desired)
        assert sink.cached_etag("s1") is None or result.ok
    return result.outcome, result.attempts


async def test_409_on_patch_is_not_connected() -> None:
    def script(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=SESSION, headers={"ETag": "e1"})
        return httpx.Response(409, json={"code": "conflict"})

    assert await apply_with(script) == (Outcome.SESSION_NOT_CONNECTED, 2)


@pytest.mark.parametrize("status", [400, 428, 418])
async def test_unexpected_4xx_fails_without_retry(status: int) -> None:
    def script(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=SESSION, headers={"ETag": "e1"})
        return httpx.Response(status)

    assert await apply_with(script) == (Outcome.FAILED, 2)


async def test_get_without_etag_is_a_protocol_failure() -> None:
    body = {key: value for key, value in SESSION.items() if key != "etag"}
    outcome, attempts = await apply_with(lambda request: httpx.Response(200, json=body))
    assert (outcome, attempts) == (Outcome.FAILED, 1)


async def test_second_401_after_a_fresh_token_is_an_auth_config_error() -> None:
    assert await apply_with(lambda request: httpx.Response(401)) == (
        Outcome.AUTH_CONFIG_ERROR,
        2,
    )


async def test_retry_after_as_an_http_date_pauses_the_budget() -> None:
    clock = ManualClock(start_ms=1_700_000_000_000)
    # one second after the clock's now, in IMF-fixdate form
    throttled = httpx.Response(429, headers={"Retry-After": "Tue, 14 Nov 2023 22:13:21 GMT"})
    desired = Indicator(Status.TYPING, clock.now_ms(), clock.now_ms() + 60_000, 1)
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(token_or(lambda r: throttled))) as http,
        GenesysSink(CONFIG, http=http, clock=clock) as sink,
    ):
        result = await sink.apply("s1", desired)
        assert (result.outcome, result.attempts) == (Outcome.RATE_LIMITED, 1)
        assert sink.budget.paused_for() == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize(
    ("failure", "ambiguous"),
    [
        (httpx.ReadTimeout("slow"), True),  # it may have reached the service
        (httpx.RemoteProtocolError("cut"), True),
        (httpx.ConnectError("refused"), False),  # it never left
    ],
)
async def test_an_unanswered_patch_makes_the_outcome_ambiguous(
    failure: Exception, ambiguous: bool
) -> None:
    def script(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=SESSION, headers={"ETag": "e1"})
        raise failure

    clock = ManualClock()
    desired = Indicator(Status.TYPING, clock.now_ms(), clock.now_ms() + 60_000, 1)
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(token_or(script))) as http,
        GenesysSink(CONFIG, http=http, clock=clock) as sink,
    ):
        result = await sink.apply("s1", desired)
    assert result.outcome is Outcome.FAILED
    assert result.ambiguous is ambiguous


async def test_a_5xx_on_a_patch_is_ambiguous_but_on_a_read_it_is_not() -> None:
    def script(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=SESSION, headers={"ETag": "e1"})
        return httpx.Response(504)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(token_or(script))) as http,
        GenesysSink(CONFIG, http=http) as sink,
    ):
        desired = Indicator(Status.TYPING, 0, 60_000, 1)
        patched = await sink.apply("s1", desired)
        assert (patched.outcome, patched.ambiguous) == (Outcome.FAILED, True)
    failing_read = token_or(lambda request: httpx.Response(503))
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(failing_read)) as http,
        GenesysSink(CONFIG, http=http) as sink,
    ):
        read = await sink.read_back("s1")
        assert (read.outcome, read.ambiguous) == (Outcome.FAILED, False)


async def test_read_back_reports_the_indicator_it_finds() -> None:
    shown = {"status": "typing", "originatedAt": 1, "expiresAt": 9, "version": 4}
    body = {**SESSION, "customAttributes": {"typingIndicator": shown, "other": 1}}
    async with (
        httpx.AsyncClient(
            transport=httpx.MockTransport(
                token_or(lambda request: httpx.Response(200, json=body, headers={"ETag": "e7"}))
            )
        ) as http,
        GenesysSink(CONFIG, http=http) as sink,
    ):
        result = await sink.read_back("s1")
        assert result.remote_indicator == Indicator(Status.TYPING, 1, 9, 4)
        assert sink.cached_etag("s1") == "e7"  # the next PATCH needs no GET


async def test_login_service_outage_is_retried_then_failed() -> None:
    fetches = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal fetches
        fetches += 1
        return httpx.Response(503)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http,
        GenesysSink(CONFIG, http=http) as sink,
    ):
        result = await sink.apply("s1", None)
    assert (result.outcome, result.attempts) == (Outcome.FAILED, 0)
    assert "login service" in result.error
    assert fetches == CONFIG.max_transient_attempts
