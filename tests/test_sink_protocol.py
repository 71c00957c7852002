"""Answers the emulator never gives (it bumps the ETag on every state change, so a PATCH
with a current ETag never meets a 409): the sink's mapping of them, over an in-memory
transport that scripts the responses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import httpx
import orjson
import pytest
from pipeline import Monotonic, eventually
from pydantic import SecretStr

from processor.asgi import serve_in_background
from processor.budget import DEFAULT_BURST_S, OVERHEAD_PRIOR
from processor.clock import ManualClock
from processor.domain import Indicator, Outcome, SinkResult, Status
from processor.models import TypingEvent
from processor.runtime.reconciler import Reconciler
from processor.sink import GenesysSink, SinkConfig
from processor.sink.auth import REFRESH_RETRY_S, TokenManager
from processor.sink.errors import TokenUnavailableError
from processor.state import EngineConfig, PartitionStore

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


def session_of(request: httpx.Request) -> dict[str, Any]:
    """The session body Genesys answers to a read of the session `request` names."""
    return {**SESSION, "id": request.url.path.rsplit("/", 1)[-1]}


# shown until far beyond any test's clock: a set whose `expiresAt` has passed is not sent
TYPING = Indicator(Status.TYPING, 0, 4_102_444_800_000, 1)


def token_or(script: Script) -> Script:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return script(request)

    return handle


async def applied(script: Script, clock: ManualClock | None = None) -> SinkResult:
    """One set of session s1 against `script` (the login always answers)."""
    clock = clock or ManualClock()
    desired = Indicator(Status.TYPING, clock.now_ms(), clock.now_ms() + 60_000, 1)
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(token_or(script))) as http,
        GenesysSink(CONFIG, http=http, clock=clock) as sink,
    ):
        result = await sink.apply("s1", desired)
        assert sink.cached_etag("s1") is None or result.ok
    return result


async def apply_with(script: Script, clock: ManualClock | None = None) -> tuple[Outcome, int]:
    result = await applied(script, clock)
    return result.outcome, result.attempts


async def test_409_on_patch_is_not_connected() -> None:
    def script(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=session_of(request), headers={"ETag": "e1"})
        return httpx.Response(409, json={"code": "conflict"})

    assert await apply_with(script) == (Outcome.SESSION_NOT_CONNECTED, 2)


@pytest.mark.parametrize("status", [400, 428, 418])
async def test_unexpected_4xx_fails_without_retry(status: int) -> None:
    def script(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=session_of(request), headers={"ETag": "e1"})
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


@pytest.mark.parametrize(
    ("value", "paused_s"),
    [
        ("Tue, 14 Nov 2023 22:13:21 GMT", 1.0),  # an IMF-fixdate one second after now
        ("inf", 1.0),  # no usable number: the default pause
        ("nan", 1.0),
        ("1e999", 1.0),
        ("99999999999", 60.0),  # believed for one window at most
        ("Thu, 01 Jan 2099 00:00:00 GMT", 60.0),
        # dates whose numbers no datetime holds: no date, the default pause
        ("Tue, 14 Nov 99999999999999999999 22:13:21 GMT", 1.0),
        ("Tue, 14 Nov 2023 22:13:21 +99999999999999999999", 1.0),
    ],
)
async def test_retry_after_pauses_the_budget_for_a_window_at_most(
    value: str, paused_s: float
) -> None:
    clock = ManualClock(start_ms=1_700_000_000_000)
    throttled = httpx.Response(429, headers={"Retry-After": value})
    desired = Indicator(Status.TYPING, clock.now_ms(), clock.now_ms() + 60_000, 1)
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(token_or(lambda r: throttled))) as http,
        GenesysSink(CONFIG, http=http, clock=clock) as sink,
    ):
        result = await sink.apply("s1", desired)
        assert (result.outcome, result.attempts) == (Outcome.RATE_LIMITED, 1)
        assert sink.budget.paused_for() == pytest.approx(paused_s, abs=0.1)
    # the audit's error says the pause taken, not a header that was not believed
    assert float(result.error.removeprefix("429; retry after ").removesuffix(" s")) == (
        pytest.approx(paused_s, abs=0.1)
    )


async def test_429s_of_calls_in_flight_halve_the_burst_once_whatever_the_retry_after() -> None:
    """Ten calls out at once, all refused with `Retry-After: 0`: the pause is over before
    the other nine answers come, which answer the burst the first taught (halved once,
    not ten times down to the least)."""
    calls = 10
    arrived: list[httpx.Request] = []
    all_out = asyncio.Event()

    async def script(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        arrived.append(request)
        if len(arrived) == calls:
            all_out.set()
        await all_out.wait()
        return httpx.Response(429, headers={"Retry-After": "0"})

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(script)) as http,
        GenesysSink(CONFIG, http=http) as sink,
    ):
        results = await asyncio.gather(*(sink.apply(f"s{i}", None) for i in range(calls)))
        assert {r.outcome for r in results} == {Outcome.RATE_LIMITED}
        rate_per_s = CONFIG.rate_per_minute / 60
        # half of what the ten drew back to back (less the little the rate gave back)
        assert sink.budget.burst_s == pytest.approx(
            min(DEFAULT_BURST_S, calls / rate_per_s) / 2, abs=0.05
        )


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
            return httpx.Response(200, json=session_of(request), headers={"ETag": "e1"})
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
            return httpx.Response(200, json=session_of(request), headers={"ETag": "e1"})
        return httpx.Response(504)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(token_or(script))) as http,
        GenesysSink(CONFIG, http=http) as sink,
    ):
        desired = TYPING
        patched = await sink.apply("s1", desired)
        assert (patched.outcome, patched.ambiguous) == (Outcome.FAILED, True)
    failing_read = token_or(lambda request: httpx.Response(503))
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(failing_read)) as http,
        GenesysSink(CONFIG, http=http) as sink,
    ):
        read = await sink.read_back("s1")
        assert (read.outcome, read.ambiguous) == (Outcome.FAILED, False)


async def test_a_5xx_retry_after_is_the_least_wait_before_the_retry() -> None:
    """A busy service says when to come back: a retry is not sent sooner, and a wait that
    outlasts the call's retry time fails the call at once instead of hammering."""
    sent: list[float] = []

    def script(request: httpx.Request) -> httpx.Response:
        sent.append(time.monotonic())
        if len(sent) == 1:
            return httpx.Response(503, headers={"Retry-After": "0.2"})
        return httpx.Response(200, json=session_of(request), headers={"ETag": "e1"})

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(token_or(script))) as http,
        GenesysSink(CONFIG, http=http) as sink,
    ):
        read = await sink.read_back("s1")
    assert (read.outcome, read.attempts) == (Outcome.APPLIED, 2)
    assert sent[1] - sent[0] >= 0.2  # (the backoff alone waits 2 ms at most)
    busy = token_or(lambda request: httpx.Response(503, headers={"Retry-After": "30"}))
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(busy)) as http,
        GenesysSink(CONFIG, http=http) as sink,
    ):
        read = await sink.read_back("s1")
    assert (read.outcome, read.attempts) == (Outcome.FAILED, 1)
    assert read.error == "GET answered HTTP 503 (no time left to retry)"


@pytest.mark.parametrize("first", [412, 503])
async def test_a_set_whose_expiry_passes_before_its_retry_is_not_sent_again(first: int) -> None:
    """DESIGN I1: a set that would expire before it can be sent is dropped. A 412's re-read
    (or a 5xx's backoff) that outlasts the indicator must not send it anyway: it would land
    already expired, and cost a clear after it."""
    clock = ManualClock(start_ms=1_700_000_000_000)
    desired = Indicator(Status.TYPING, clock.now_ms(), clock.now_ms() + 300, 1)
    patches: list[int] = []

    def script(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=session_of(request), headers={"ETag": "e1"})
        patches.append(clock.now_ms())
        clock.advance(400)  # the answer came after the indicator's expiresAt
        return httpx.Response(first)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(token_or(script))) as http,
        GenesysSink(CONFIG, http=http, clock=clock) as sink,
    ):
        result = await sink.apply("s1", desired)
    assert len(patches) == 1
    assert result.outcome is Outcome.FAILED
    assert result.error == "its time passed before it could be sent"
    assert result.ambiguous is (first == 503)  # a 5xx may have landed: read back


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
    # the call's retries come within `LOGIN_RETRY_S`: they do not ask the login again
    assert fetches == 1
    assert sink.budget.paused_for() == 0  # a wait of our own guess holds no other call


async def test_a_failed_login_is_not_asked_again_by_every_call_until_it_may_answer() -> None:
    """With no valid token, every call (and its retries) would start a login of its own
    once the last one failed: callers fail at once until `Retry-After` (else
    `LOGIN_RETRY_S`) has passed, then one login serves them all."""
    clock = Monotonic()
    logins: list[float] = []
    login_up = False

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            logins.append(clock.now)
            if not login_up:
                return httpx.Response(429, headers={"Retry-After": "7"})
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return httpx.Response(200, json=session_of(request), headers={"ETag": "e1"})

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http,
        GenesysSink(CONFIG, http=http, monotonic=clock) as sink,
    ):
        results = await asyncio.gather(*(sink.apply(f"s{i}", None) for i in range(20)))
        assert {r.outcome for r in results} == {Outcome.FAILED}
        clock.now += 6.9
        assert (await sink.apply("s0", None)).outcome is Outcome.FAILED
        assert len(logins) == 1
        login_up = True
        clock.now += 0.2
        results = await asyncio.gather(*(sink.apply(f"s{i}", None) for i in range(20)))
        assert {r.outcome for r in results} == {Outcome.APPLIED}
        assert len(logins) == 2


async def test_a_logins_retry_after_holds_the_budget_until_the_login_may_answer() -> None:
    """With no valid token no call goes out before the login service answers again: the
    budget waits out its `Retry-After` as for a 429 of the API. Else the scheduler took
    work all along only for it to fail at once, each session's backoff growing with every
    try, so that its clear waited up to `retry_max_ms` past the login's return."""
    clock = Monotonic()
    login_up = False

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            if not login_up:
                return httpx.Response(429, headers={"Retry-After": "7"})
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return httpx.Response(200, json=session_of(request), headers={"ETag": "e1"})

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http,
        GenesysSink(CONFIG, http=http, monotonic=clock) as sink,
    ):
        assert (await sink.apply("s0", None)).outcome is Outcome.FAILED
        assert sink.budget.paused_for() == pytest.approx(7.0)
        assert sink.budget.level() <= 0  # the scheduler takes no work meanwhile
        clock.now += 3.0  # a call failing later in the wait: what is left of it
        assert (await sink.apply("s1", None)).outcome is Outcome.FAILED
        assert sink.budget.paused_for() == pytest.approx(4.0)
        login_up = True
        clock.now += 4.1
        assert sink.budget.paused_for() == 0
        assert (await sink.apply("s0", None)).outcome is Outcome.APPLIED


async def test_an_early_refresh_is_not_tried_again_before_the_logins_retry_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refresh refused with `Retry-After` while the cached token is valid: the token
    serves, and the login is asked again once the wait is over (or the token expires),
    not `REFRESH_RETRY_S` later, when it would refuse again."""
    clock = Monotonic()
    logins: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        logins.append(clock.now)
        if len(logins) == 2:
            return httpx.Response(429, headers={"Retry-After": "20"})
        return httpx.Response(200, json={"access_token": "t", "expires_in": 100})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        tokens = TokenManager(http, CONFIG.token_url, "id", SecretStr("secret"), monotonic=clock)
        start = clock.now
        assert await tokens.token() == "t"
        clock.now = start + 72.0  # within the 30 s margin: refreshed, refused for 20 s
        with caplog.at_level(logging.WARNING, logger="processor.sink"):
            assert await tokens.token() == "t"
            await eventually(
                lambda: "refresh failed" in caplog.text, 5.0, "the refused refresh taken in"
            )
        for waited in (REFRESH_RETRY_S, 19.9):
            clock.now = start + 72.0 + waited
            running = asyncio.all_tasks()
            assert await tokens.token() == "t"
            assert asyncio.all_tasks() == running  # no refresh started
        clock.now = start + 92.0
        assert await tokens.token() == "t"
        await eventually(lambda: len(logins) == 3, 5.0, "the refresh once the wait is over")
        await tokens.aclose()


async def test_a_login_refused_with_a_date_no_datetime_holds_waits_like_any_other() -> None:
    """A login's `Retry-After` that is no date is the default wait: the calls fail, and
    the login is not asked again by each of them (raising, every call crashed and started
    a login of its own)."""
    clock = Monotonic()
    logins = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal logins
        if request.url.path == "/oauth/token":
            logins += 1
            when = "Tue, 14 Nov 2023 22:13:21 +99999999999999999999"
            return httpx.Response(429, headers={"Retry-After": when})
        return httpx.Response(200, json=session_of(request), headers={"ETag": "e1"})

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http,
        GenesysSink(CONFIG, http=http, monotonic=clock) as sink,
    ):
        results = [await sink.apply(f"s{i}", None) for i in range(3)]
    assert {r.outcome for r in results} == {Outcome.FAILED}
    assert logins == 1


# --- tokens: an early refresh that fails ---


async def test_a_failed_early_refresh_keeps_the_cached_token_until_it_expires(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A login-service blip within the refresh margin fails no call while the cached token
    is valid: one refresh for all callers, the next only `REFRESH_RETRY_S` later; calls
    never wait for a refresh while the cached token is valid."""
    clock = Monotonic()
    config = replace(CONFIG, client_secret=SecretStr("s3cr3t-42"))
    login_up = True
    fetches = 0
    sent_with: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal fetches
        if request.url.path == "/oauth/token":
            fetches += 1
            if not login_up:
                return httpx.Response(503)
            return httpx.Response(200, json={"access_token": f"tok-{fetches}", "expires_in": 100})
        sent_with.append(request.headers["Authorization"])
        if request.method == "GET":
            return httpx.Response(200, json=session_of(request), headers={"ETag": "e1"})
        return httpx.Response(200, json={}, headers={"ETag": "e2"})

    async def apply(*session_ids: str) -> list[Outcome]:
        results = await asyncio.gather(*(sink.apply(sid, TYPING) for sid in session_ids))
        return [result.outcome for result in results]

    def warnings() -> list[logging.LogRecord]:
        return [record for record in caplog.records if record.levelno == logging.WARNING]

    with caplog.at_level(logging.DEBUG, logger="processor.sink"):
        async with (
            httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http,
            GenesysSink(config, http=http, monotonic=clock) as sink,
        ):
            start = clock.now
            assert await apply("s0") == [Outcome.APPLIED]  # tok-1, valid for 100 s
            login_up = False
            clock.now = start + 75  # within the 30 s margin, 25 s before it expires
            assert await apply("s1", "s2", "s3") == [Outcome.APPLIED] * 3
            assert fetches == 2  # one refresh for the three calls
            assert len(warnings()) == 1
            clock.now += REFRESH_RETRY_S - 1
            assert await apply("s4") == [Outcome.APPLIED]
            assert fetches == 2  # not on every call
            clock.now += 1
            assert await apply("s5") == [Outcome.APPLIED]
            assert (fetches, len(warnings())) == (3, 2)
            assert set(sent_with) == {"Bearer tok-1"}
            login_up = True
            clock.now += REFRESH_RETRY_S
            # the valid token serves while the new one is fetched, which serves next
            assert await apply("s6") == [Outcome.APPLIED]
            assert (fetches, sent_with[-1]) == (4, "Bearer tok-1")
            assert await apply("s6") == [Outcome.APPLIED]
            assert (fetches, sent_with[-1]) == (4, "Bearer tok-4")
            login_up = False
            clock.now += 100  # tok-4 has expired: now a failed refresh fails the call
            expired = await sink.apply("s7", TYPING)
    assert (expired.outcome, expired.attempts) == (Outcome.FAILED, 0)
    assert "login service" in expired.error
    assert len(warnings()) == 2
    assert "s3cr3t-42" not in caplog.text
    assert "tok-" not in caplog.text


async def test_calls_do_not_wait_for_an_early_refresh_while_their_token_is_valid() -> None:
    """A login service that hangs at the early refresh holds no call: the cached token
    serves until it expires, and only then does a call wait for the login."""
    clock = Monotonic()
    hanging = asyncio.Event()
    logins = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal logins
        if request.url.path == "/oauth/token":
            logins += 1
            if logins > 1:
                await hanging.wait()  # never answers within the test
            return httpx.Response(200, json={"access_token": "tok", "expires_in": 100})
        return httpx.Response(200, json=session_of(request), headers={"ETag": "e1"})

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http,
        GenesysSink(CONFIG, http=http, monotonic=clock) as sink,
    ):
        assert (await sink.apply("s0", None)).outcome is Outcome.APPLIED
        clock.now += 80  # the early refresh is due; the token is valid 20 s more
        async with asyncio.timeout(5):
            results = await asyncio.gather(*(sink.apply(f"s{i}", None) for i in range(1, 4)))
        assert [r.outcome for r in results] == [Outcome.APPLIED] * 3
        assert logins == 2  # one refresh under way for all of them
        hanging.set()


async def test_a_401_for_a_replaced_token_keeps_the_cached_one_while_login_is_down() -> None:
    """A 401 for an older token leaves the cached one in use through a failed refresh;
    a 401 for the cached one itself does not."""
    clock = Monotonic()
    login_up = True

    def handle(request: httpx.Request) -> httpx.Response:
        if not login_up:
            return httpx.Response(503)
        return httpx.Response(200, json={"access_token": "tok-new", "expires_in": 100})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        tokens = TokenManager(http, CONFIG.token_url, "id", SecretStr("secret"), monotonic=clock)
        assert await tokens.token() == "tok-new"
        login_up = False
        clock.now += 75  # the cached token is due for its refresh, and valid for 25 s
        assert await tokens.invalidate("tok-old") == "tok-new"
        with pytest.raises(TokenUnavailableError):
            await tokens.invalidate("tok-new")  # the API refused it: never sent again
        await tokens.aclose()


# --- the budget: pauses and unsent requests ---


async def test_prepaid_requests_do_not_go_out_during_a_pause_another_call_began() -> None:
    """Call `a` was planned and paid before `b` met a 429: its PATCH is not sent during
    the pause, and its token comes back (the scheduler decides again after the pause)."""
    clock = Monotonic()
    reading = asyncio.Event()
    release = asyncio.Event()
    patched: list[str] = []

    async def script(request: httpx.Request) -> httpx.Response:
        session_id = request.url.path.rsplit("/", 1)[1]
        if session_id == "b":
            return httpx.Response(429, headers={"Retry-After": "30"})
        if request.method == "GET":
            reading.set()
            await release.wait()
            return httpx.Response(200, json=session_of(request), headers={"ETag": "e1"})
        patched.append(session_id)
        return httpx.Response(200, json={}, headers={"ETag": "e2"})

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return await script(request)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http,
        GenesysSink(CONFIG, http=http, monotonic=clock) as sink,
    ):
        sink.budget.spend(2)  # the scheduler pays a's GET and PATCH,
        sink.budget.spend(1)  # and b's PATCH
        call_a = asyncio.create_task(sink.apply("a", TYPING, prepaid=2))
        async with asyncio.timeout(5):
            await reading.wait()
        throttled = await sink.apply("b", TYPING, prepaid=1)
        assert throttled.outcome is Outcome.RATE_LIMITED
        release.set()
        async with asyncio.timeout(5):
            held = await call_a
        assert (held.outcome, held.attempts) == (Outcome.RATE_LIMITED, 1)
        assert patched == []
        assert sink.budget.spent == 2  # a's GET and b's GET


async def test_calls_that_never_got_a_token_cost_no_budget() -> None:
    """A login-service outage sends nothing: it spends nothing (DESIGN §4b)."""
    clock = Monotonic()
    api_requests = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal api_requests
        if request.url.path != "/oauth/token":
            api_requests += 1
        return httpx.Response(503)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http,
        GenesysSink(CONFIG, http=http, monotonic=clock) as sink,
    ):
        budget = sink.budget
        level = budget.level()
        budget.spend(2)  # as the scheduler prepays a GET and a PATCH
        paid = await sink.apply("s1", None, prepaid=2)
        unpaid = await sink.apply("s2", None)  # what the sink itself would spend
        for result in (paid, unpaid):
            assert (result.outcome, result.attempts) == (Outcome.FAILED, 0)
        assert api_requests == 0
        assert budget.spent == 0
        assert budget.level() == pytest.approx(level)
        assert budget.window_room() == pytest.approx(budget.allowance)
        assert budget.overhead == 0.0


@pytest.mark.parametrize(
    ("failure", "sent"),
    [
        (httpx.ConnectError("refused"), False),
        (httpx.PoolTimeout("no connection free"), False),
        (httpx.ReadTimeout("slow"), True),  # it may have reached the service: it costs
    ],
)
async def test_a_request_that_never_left_gives_its_budget_token_back(
    failure: Exception, sent: bool
) -> None:
    clock = Monotonic()

    def script(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=session_of(request), headers={"ETag": "e1"})
        raise failure

    patches = CONFIG.max_transient_attempts
    cost = 1 + (patches if sent else 0)  # the GET went out in any case
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(token_or(script))) as http,
        GenesysSink(CONFIG, http=http, monotonic=clock) as sink,
    ):
        budget = sink.budget
        unpaid = await sink.apply("s1", TYPING)
        assert (unpaid.outcome, unpaid.attempts) == (Outcome.FAILED, 1 + patches)
        assert budget.spent == cost
        # all of them the sink's own: no planned call to charge them to
        assert budget.overhead == pytest.approx(cost / OVERHEAD_PRIOR)
        budget.spend(2)  # as the scheduler prepays a GET and a PATCH
        paid = await sink.apply("s2", TYPING, prepaid=2)
        assert (paid.outcome, paid.attempts) == (Outcome.FAILED, 1 + patches)
        assert budget.spent == 2 * cost


CONV = "11111111-1111-4111-8111-111111111111"
COMM = "22222222-2222-4222-8222-222222222222"
INTEGRATION = "33333333-3333-4333-8333-333333333333"


def typing_call(
    sink: GenesysSink, kind: str, duration_ms: int, until_ms: int | None
) -> Awaitable[SinkResult]:
    if kind == "agent":
        return sink.agent_typing(CONV, COMM, duration_ms, until_ms=until_ms)
    return sink.open_messaging_typing(
        INTEGRATION, "cust-1", "Opaque", None, duration_ms, until_ms=until_ms
    )


@pytest.mark.parametrize("kind", ["agent", "open"])
async def test_a_retried_typing_call_shows_no_longer_than_it_was_asked_to(kind: str) -> None:
    """Genesys shows typing from when a request arrives: a retry (after a slow 503 here)
    carries what is left until the indicator is to go, and the time it is sent at, not
    what the first attempt carried; else it shows typing past the deadline."""
    clock = ManualClock(start_ms=1_700_000_000_000)
    until = clock.now_ms() + 5000
    received: list[tuple[int, dict[str, Any]]] = []

    def script(request: httpx.Request) -> httpx.Response:
        received.append((clock.now_ms(), orjson.loads(request.content)))
        if len(received) == 1:
            clock.advance(3000)  # the gateway took 3 s to say it is busy
            return httpx.Response(503, text="<html>busy</html>")
        return httpx.Response(202)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(token_or(script))) as http,
        GenesysSink(CONFIG, http=http, clock=clock) as sink,
    ):
        result = await typing_call(sink, kind, 5000, until)
    assert (result.outcome, result.attempts) == (Outcome.APPLIED, 2)
    durations = [
        (body["typing"] if kind == "agent" else body["events"][0]["typing"])["duration"]
        for _, body in received
    ]
    assert durations == [5000, 2000]
    assert all(at + d == until for (at, _), d in zip(received, durations, strict=True))
    if kind == "open":
        sent_at = [body["channel"]["time"] for _, body in received]
        assert sent_at == ["2023-11-14T22:13:20.000Z", "2023-11-14T22:13:23.000Z"]


@pytest.mark.parametrize("kind", ["agent", "open"])
async def test_a_typing_call_says_until_when_the_request_that_landed_shows_it(kind: str) -> None:
    """A retry with less than a second left still sends the shortest duration (DESIGN
    §2b: at least 1000 ms), so it shows typing past what was asked for: the result says
    until when, so that the lapse is recorded when it happens, not while still shown."""
    clock = ManualClock(start_ms=1_700_000_000_000)
    until = clock.now_ms() + 1000
    received: list[tuple[int, dict[str, Any]]] = []

    def script(request: httpx.Request) -> httpx.Response:
        received.append((clock.now_ms(), orjson.loads(request.content)))
        if len(received) == 1:
            clock.advance(600)  # busy, after 600 ms
            return httpx.Response(503, text="<html>busy</html>")
        return httpx.Response(202)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(token_or(script))) as http,
        GenesysSink(CONFIG, http=http, clock=clock) as sink,
    ):
        result = await typing_call(sink, kind, 1000, until)
    assert (result.outcome, result.attempts) == (Outcome.APPLIED, 2)
    retried_at, body = received[-1]
    duration = (body["typing"] if kind == "agent" else body["events"][0]["typing"])["duration"]
    assert duration == 1000
    assert result.shown_until_ms == retried_at + 1000 == until + 600


async def test_a_messaging_call_is_not_retried_past_the_deadline() -> None:
    """Less than a second before the deadline, a call sends the shortest duration (DESIGN
    §2b), shown up to a second past the deadline (I1). Its retry after a 5xx must not go
    out once the deadline has passed: it would show typing a second past that again."""
    clock = ManualClock(start_ms=1_700_000_000_000)
    store = PartitionStore(0, EngineConfig(), clock)
    deadline = clock.now_ms() + 300
    event = {
        "event_id": "e1",
        "session_id": "s1",
        "status": "typing",
        "occurred_at": deadline - 5000,
        "timeout_ms": 5000,
        "target": {"kind": "agent_typing", "conversation_id": CONV, "communication_id": COMM},
    }
    store.on_event(TypingEvent.model_validate(event), 1)
    [work] = store.take_work(1)
    assert work.duration_ms == 1000
    sent: list[int] = []

    def script(request: httpx.Request) -> httpx.Response:
        sent.append(clock.now_ms())
        if len(sent) == 1:
            clock.advance(500)  # busy, after the deadline has passed
            return httpx.Response(503, text="<html>busy</html>")
        return httpx.Response(202)

    results: list[SinkResult] = []
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(token_or(script))) as http,
        GenesysSink(CONFIG, http=http, clock=clock) as sink,
    ):
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        await Reconciler(sink, 1).launch(work, 0, done, results.append)
    assert sent == [deadline - 300]  # no request after the deadline
    [result] = results
    assert result.outcome is Outcome.FAILED


@pytest.mark.parametrize("kind", ["agent", "open"])
async def test_a_typing_call_whose_time_passed_while_retrying_is_not_sent_again(
    kind: str,
) -> None:
    clock = ManualClock(start_ms=1_700_000_000_000)
    until = clock.now_ms() + 2000
    requests: list[int] = []

    def script(request: httpx.Request) -> httpx.Response:
        requests.append(clock.now_ms())
        clock.advance(2500)
        raise httpx.ReadTimeout("slow")

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(token_or(script))) as http,
        GenesysSink(CONFIG, http=http, clock=clock) as sink,
    ):
        result = await typing_call(sink, kind, 2000, until)
    assert len(requests) == 1
    assert result.outcome is Outcome.FAILED
    assert "time passed" in (result.error or "")


UNREADABLE = {"Content-Encoding": "gzip", "Content-Type": "text/html"}
"""A proxy's error page that says it is gzipped and is not: httpx cannot decode it."""


async def test_an_answer_that_cannot_be_read_is_a_failed_call_not_a_crash() -> None:
    def script(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, content=b"<html>bad gateway</html>", headers=UNREADABLE)

    result = await applied(script)
    assert result.outcome is Outcome.FAILED
    assert result.attempts == CONFIG.max_transient_attempts  # retried as a 5xx would be
    assert "DecodingError" in (result.error or "")


LOGINS: dict[str, Callable[[], httpx.Response]] = {
    "unreadable": lambda: httpx.Response(503, content=b"<html>down</html>", headers=UNREADABLE),
    "nan-lifetime": lambda: httpx.Response(200, json={"access_token": "t", "expires_in": "NaN"}),
    "endless-lifetime": lambda: httpx.Response(
        200, json={"access_token": "t", "expires_in": "Infinity"}
    ),
}


@pytest.mark.parametrize("login", sorted(LOGINS))
async def test_a_login_answer_that_cannot_be_used_leaves_no_token(login: str) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return LOGINS[login]()
        return httpx.Response(200, json=session_of(request), headers={"ETag": "e1"})

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http,
        GenesysSink(CONFIG, http=http, clock=ManualClock()) as sink,
    ):
        result = await sink.apply("s1", None)
    assert result.outcome is Outcome.FAILED
    assert "login service" in (result.error or "")


async def _login_with_an_overflowing_lifetime(
    scope: dict[str, Any], receive: Any, send: Any
) -> None:
    """A login service whose `expires_in` is an integer no float can hold."""
    assert scope["type"] == "http"
    body = b'{"access_token": "t", "expires_in": 1' + b"0" * 400 + b"}"
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def test_a_login_lifetime_too_large_for_a_float_is_a_failed_call_not_a_crash() -> None:
    """It failed the login with an OverflowError, which no caller expects: the call
    crashed, and since no failed login was recorded, every call asked the login again."""
    async with serve_in_background(_login_with_an_overflowing_lifetime) as login:
        config = replace(CONFIG, login_url=login.base_url, api_url=login.base_url)
        async with GenesysSink(config, clock=ManualClock()) as sink:
            first = await sink.apply("s1", None)
            second = await sink.apply("s1", None)
            assert sink.tokens.fetches == 1  # the next login waits, as after any failure
    for result in (first, second):
        assert (result.outcome, result.attempts) == (Outcome.FAILED, 0)
        assert "unusable token" in result.error
