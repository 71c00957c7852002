"""The Genesys sink against the emulator over real HTTP: every outcome, its cost, its headers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest
from pipeline import eventually
from pydantic import SecretStr

from processor import USER_AGENT
from processor.budget import OVERHEAD_PRIOR
from processor.clock import SystemClock
from processor.domain import Indicator, Outcome, SessionState, Status
from processor.emulator.app import SESSION_PATH, TOKEN_PATH
from processor.emulator.config import EmulatorConfig
from processor.emulator.server import serve_in_background
from processor.emulator.testing import EmulatorHandle
from processor.sink import GenesysSink, SinkConfig
from processor.sink.auth import REFUSED_FIRST_RETRY_S, REFUSED_MAX_RETRY_S
from processor.sink.breaker import BreakerState
from processor.sink.errors import AuthConfigError


class FakeMonotonic:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config_for(emulator: EmulatorHandle, **overrides: Any) -> SinkConfig:
    """A sink config aimed at the emulator; budget generous and backoff tiny unless overridden."""
    values: dict[str, Any] = {
        "api_url": emulator.base_url,
        "login_url": emulator.base_url,
        "client_id": emulator.client_id,
        "client_secret": SecretStr(emulator.client_secret),
        "rate_per_minute": 6_000_000,
        "backoff_base_s": 0.001,
        "backoff_cap_s": 0.005,
    }
    values.update(overrides)
    return SinkConfig(**values)


def indicator(version: int, status: Status = Status.TYPING, ttl_ms: int = 30_000) -> Indicator:
    now = SystemClock().now_ms()
    return Indicator(status=status, originated_at=now, expires_at=now + ttl_ms, version=version)


def calls(emulator: EmulatorHandle, method: str, status: int | None = None) -> int:
    path = TOKEN_PATH if method == "TOKEN" else SESSION_PATH
    return emulator.count("POST" if method == "TOKEN" else method, path, status)


async def wait_until(
    condition: Callable[[], bool], timeout_s: float = 10.0, poll_s: float = 0.01
) -> None:
    """Poll `condition` until it holds; fail after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - the state belongs to another component
            await asyncio.sleep(poll_s)


@pytest.fixture
async def sink(emulator: EmulatorHandle) -> AsyncIterator[GenesysSink]:
    async with GenesysSink(config_for(emulator)) as running:
        yield running


# --- applied, and what it costs (DESIGN I3) ---


async def test_set_then_clear_is_applied_and_recorded(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    emulator.create_session("s1")
    desired = indicator(1)

    first = await sink.apply("s1", desired)
    assert first.outcome is Outcome.APPLIED
    assert first.ok
    assert (first.http_status, first.attempts) == (200, 2)  # GET (no ETag yet) + PATCH
    assert len(first.call_latencies_ms) == 2
    assert first.latency_ms >= max(first.call_latencies_ms)
    assert first.remote_state is SessionState.CONNECTED

    cleared = await sink.apply("s1", None)
    assert (cleared.outcome, cleared.attempts) == (Outcome.APPLIED, 1)

    history = emulator.history("s1")
    assert [change["typing_indicator"] for change in history] == [desired.to_genesys(), None]
    assert sink.cached_etag("s1") == emulator.session("s1")["etag"]


async def test_100_updates_cost_one_get_and_100_patches(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    emulator.create_session("s1")
    for version in range(1, 101):
        result = await sink.apply("s1", indicator(version))
        assert result.outcome is Outcome.APPLIED

    assert calls(emulator, "GET") == 1
    assert calls(emulator, "PATCH") == calls(emulator, "PATCH", 200) == 100
    assert calls(emulator, "TOKEN") == 1
    assert emulator.session("s1")["customAttributes"]["typingIndicator"]["version"] == 100
    assert len(emulator.history("s1")) == 100


async def test_a_forced_412_costs_exactly_one_get_and_one_patch_more(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    emulator.create_session("s1")
    assert (await sink.apply("s1", indicator(1))).ok
    plain = await sink.apply("s1", indicator(2))
    assert (plain.outcome, plain.attempts) == (Outcome.APPLIED, 1)
    before = (calls(emulator, "GET"), calls(emulator, "PATCH"))

    emulator.write_as_other("s1", {"agentNote": "hello"})  # bumps the ETag behind our back
    sink.budget.spend(1)  # as the scheduler prepays the one request it planned
    overhead = sink.budget.overhead
    result = await sink.apply("s1", indicator(3), prepaid=1)

    assert (result.outcome, result.http_status, result.attempts) == (Outcome.APPLIED, 200, 3)
    # the re-read and the retry were not planned: the planner keeps room for such requests
    assert sink.budget.overhead == pytest.approx(overhead + 2 / (1 + OVERHEAD_PRIOR), rel=1e-3)
    after = (calls(emulator, "GET"), calls(emulator, "PATCH"))
    assert (after[0] - before[0], after[1] - before[1]) == (1, 2)  # vs (0, 1) without the 412
    assert calls(emulator, "PATCH", 412) == 1
    attributes = emulator.session("s1")["customAttributes"]
    assert attributes["agentNote"] == "hello"  # merge semantics: the other writer's key stays
    assert attributes["typingIndicator"]["version"] == 3


async def test_a_version_another_writer_already_shows_is_never_written_again(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    """A partition's previous owner, still at work during a rebalance, set version 4; this
    owner, one change behind, must not write a second version 4 (versions never repeat)."""
    emulator.create_session("s1")
    theirs = indicator(4)
    emulator.write_as_other("s1", {"typingIndicator": theirs.to_genesys()})

    result = await sink.apply("s1", indicator(4, Status.PAUSED))
    assert (result.outcome, result.attempts) == (Outcome.OVERTAKEN, 1)  # the GET alone
    assert result.remote_indicator == theirs
    sink.forget("s1")
    clear = await sink.apply("s1", None, version=3)
    assert clear.outcome is Outcome.OVERTAKEN
    assert calls(emulator, "PATCH") == 0
    assert (await sink.apply("s1", None, version=5)).ok  # the next version goes through
    assert emulator.history("s1")[-1]["typing_indicator"] is None


async def test_a_read_that_shows_the_change_already_there_sends_nothing(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    emulator.create_session("s1")
    same = indicator(2)
    emulator.write_as_other("s1", {"typingIndicator": same.to_genesys()})
    result = await sink.apply("s1", same)
    assert (result.outcome, result.attempts) == (Outcome.APPLIED, 1)
    sink.forget("s1")
    emulator.write_as_other("s1", {"typingIndicator": None})
    cleared = await sink.apply("s1", None, version=3)
    assert (cleared.outcome, cleared.attempts) == (Outcome.APPLIED, 1)
    assert calls(emulator, "PATCH") == 0


async def test_conflict_exhausted_after_max_attempts(emulator: EmulatorHandle) -> None:
    emulator.create_session("s1")
    emulator.set_faults(conflict_rate=1.0, seed=1)
    async with GenesysSink(config_for(emulator, max_conflict_attempts=3)) as sink:
        result = await sink.apply("s1", indicator(1))
        assert sink.cached_etag("s1") is None
    assert result.outcome is Outcome.CONFLICT
    assert (result.http_status, result.attempts) == (412, 6)
    assert "3 PATCHes" in result.error
    assert calls(emulator, "PATCH", 412) == 3
    assert calls(emulator, "GET") == 3  # first read, then one re-read per retried 412
    assert emulator.history("s1") == []


async def test_calls_for_one_session_never_overlap_and_last_wins(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    emulator.create_session("s1")
    emulator.set_faults(latency_ms=2, jitter_ms=5, seed=3)
    results = await asyncio.gather(*(sink.apply("s1", indicator(v)) for v in range(1, 21)))
    assert all(result.ok for result in results)
    # overlapping calls would have raced on the ETag: 412s and more than one GET
    assert calls(emulator, "PATCH", 412) == 0
    assert calls(emulator, "GET") == 1
    versions = [change["typing_indicator"]["version"] for change in emulator.history("s1")]
    assert versions == list(range(1, 21))


# --- the other outcomes ---


@pytest.mark.parametrize("bad", ["", "../admin", "a/b", "s 1", "-lead", "x" * 129, "s1?x=1"])
async def test_invalid_session_id_is_rejected_before_any_call(
    emulator: EmulatorHandle, sink: GenesysSink, bad: str
) -> None:
    for desired in (indicator(1), None):
        result = await sink.apply(bad, desired)
        assert (result.outcome, result.attempts, result.http_status) == (
            Outcome.REJECTED,
            0,
            None,
        )
    read, session = await sink.get_session(bad)
    assert (read.outcome, session) == (Outcome.REJECTED, None)
    assert emulator.stats()["total"] == 0  # not even a token request


async def test_unknown_session_is_not_found(emulator: EmulatorHandle, sink: GenesysSink) -> None:
    result = await sink.apply("nobody", indicator(1))
    assert (result.outcome, result.http_status, result.attempts) == (
        Outcome.SESSION_NOT_FOUND,
        404,
        1,
    )
    assert calls(emulator, "PATCH") == 0


async def test_queued_session_is_not_connected_without_a_patch(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    emulator.create_session("q1", state="queued")
    result = await sink.apply("q1", indicator(1))
    assert result.outcome is Outcome.SESSION_NOT_CONNECTED
    assert result.remote_state is SessionState.QUEUED
    assert result.attempts == 1
    assert calls(emulator, "PATCH") == 0
    assert sink.cached_etag("q1") is None  # the next apply validates the state again


async def test_session_closed_behind_a_cached_etag(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    emulator.create_session("s1")
    assert (await sink.apply("s1", indicator(1))).ok
    emulator.set_state("s1", "closed")
    result = await sink.apply("s1", None)
    # the state change bumped the ETag: 412, then the re-read shows the session closed
    assert result.outcome is Outcome.SESSION_NOT_CONNECTED
    assert result.remote_state is SessionState.CLOSED
    assert result.attempts == 2
    assert sink.cached_etag("s1") is None


async def test_forget_drops_the_etag_so_the_next_apply_reads_again(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    emulator.create_session("s1")
    assert (await sink.apply("s1", indicator(1))).ok
    sink.forget("s1")
    assert sink.cached_etag("s1") is None
    result = await sink.apply("s1", indicator(2))
    assert (result.outcome, result.attempts) == (Outcome.APPLIED, 2)
    assert calls(emulator, "GET") == 2


@pytest.mark.parametrize("call", ["apply", "get_session"])
async def test_a_session_forgotten_during_its_call_keeps_no_etag_from_the_answer(
    emulator: EmulatorHandle, sink: GenesysSink, call: str
) -> None:
    """A partition moved away while a call of it was in flight: the ETag its answer brings
    is not cached, or it would outlive the forget and cost a 412 once the session came
    back after another writer changed it."""
    emulator.create_session("s1")
    assert (await sink.apply("s1", indicator(1))).ok  # its ETag cached: the next is a PATCH
    spent = sink.budget.spent
    emulator.set_faults(latency_ms=500)
    running = asyncio.create_task(
        sink.apply("s1", indicator(2)) if call == "apply" else sink.get_session("s1")
    )
    await wait_until(lambda: sink.budget.spent > spent)  # its request is going out
    sink.forget("s1")
    await running
    assert sink.cached_etag("s1") is None
    emulator.set_faults(latency_ms=0)

    emulator.write_as_other("s1", {"other": "writer"})  # the ETag moves on meanwhile
    again = await sink.apply("s1", indicator(3))
    assert (again.outcome, again.attempts) == (Outcome.APPLIED, 2)  # GET and PATCH
    assert calls(emulator, "PATCH", 412) == 0


async def test_etag_cache_is_bounded(emulator: EmulatorHandle) -> None:
    for n in range(3):
        emulator.create_session(f"s{n}")
    async with GenesysSink(config_for(emulator, etag_cache_size=2)) as sink:
        for n in range(3):
            assert (await sink.apply(f"s{n}", indicator(1))).ok
        assert sink.cached_etag("s0") is None  # least recently used, evicted
        assert sink.cached_etag("s2") is not None
        assert (await sink.apply("s0", indicator(2))).attempts == 2


async def test_get_session_reads_state_version_and_caches_the_etag(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    emulator.create_session("s1")
    assert (await sink.apply("s1", indicator(7))).ok
    sink.forget("s1")
    read, session = await sink.get_session("s1")
    assert read.ok
    assert session is not None
    assert (session.state, session.indicator_version) == (SessionState.CONNECTED, 7)
    assert sink.cached_etag("s1") == session.etag == emulator.session("s1")["etag"]


# --- the wire: headers ---


async def test_requests_carry_the_contract_headers(emulator: EmulatorHandle) -> None:
    emulator.create_session("s1")
    seen: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request)

    async with (
        httpx.AsyncClient(event_hooks={"request": [record]}) as http,
        GenesysSink(config_for(emulator), http=http) as sink,
    ):
        assert (await sink.apply("s1", indicator(1))).ok
        assert (await sink.apply("s1", None)).ok

    token, get, patch, clear = seen
    assert token.url.path == TOKEN_PATH
    assert token.headers["Authorization"].startswith("Basic ")
    assert b"grant_type=client_credentials" in token.content
    assert emulator.client_secret.encode() not in token.content  # not in the form body
    for request in (get, patch, clear):
        assert request.headers["Authorization"].startswith("Bearer ")
        assert request.headers["Accept"] == "application/json"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("genesys-typing-processor/")
    assert "If-Match" not in get.headers
    assert patch.headers["If-Match"]
    assert clear.headers["If-Match"]
    assert clear.headers["If-Match"] != patch.headers["If-Match"]  # from the PATCH response
    assert clear.content == b'{"customAttributes":{"typingIndicator":null}}'


# --- tokens ---


async def test_200_sessions_concurrently_share_one_token_request(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    ids = [f"c{n}" for n in range(200)]
    for session_id in ids:
        emulator.create_session(session_id)
    emulator.set_faults(latency_ms=5, seed=2)
    results = await asyncio.gather(*(sink.apply(sid, indicator(1)) for sid in ids))
    assert [result.outcome for result in results] == [Outcome.APPLIED] * 200
    assert calls(emulator, "TOKEN") == 1
    assert sink.tokens.fetches == 1
    assert (calls(emulator, "GET"), calls(emulator, "PATCH")) == (200, 200)


async def test_token_is_refreshed_before_it_expires(emulator: EmulatorHandle) -> None:
    emulator.create_session("s1")
    clock = FakeMonotonic()
    async with GenesysSink(config_for(emulator), monotonic=clock) as sink:
        assert (await sink.apply("s1", indicator(1))).ok
        clock.advance(86_400 - 31)  # emulator tokens live a day; still outside the margin
        assert (await sink.apply("s1", indicator(2))).ok
        assert calls(emulator, "TOKEN") == 1
        clock.advance(2)  # now within 30 s of expiry: refreshed while the cached one serves
        assert (await sink.apply("s1", indicator(3))).ok
        await eventually(lambda: calls(emulator, "TOKEN") == 2, 10, "the token refreshed")
        assert (await sink.apply("s1", indicator(4))).ok
    assert calls(emulator, "TOKEN") == 2
    assert calls(emulator, "PATCH", 401) == 0


async def test_token_expiring_mid_run_is_refreshed_once_and_the_call_retried(
    emulator: EmulatorHandle,
) -> None:
    """The client believes its token is fresh (frozen clock); the server lets it expire."""
    emulator.create_session("s1")
    emulator.set_faults(token_lifetime_s=1)
    results = []
    async with GenesysSink(config_for(emulator), monotonic=FakeMonotonic()) as sink:
        async with asyncio.timeout(15):
            version = 0
            while calls(emulator, "PATCH", 401) == 0:
                version += 1
                results.append(await sink.apply("s1", indicator(version)))
                await asyncio.sleep(0.05)
    assert all(result.outcome is Outcome.APPLIED for result in results)
    assert results[-1].attempts == 2  # the 401, then the retry with the new token
    assert calls(emulator, "TOKEN") == 2
    assert calls(emulator, "GET") == 1  # the ETag survived the refresh


async def test_revoked_tokens_are_replaced_and_a_vanished_session_is_not_found(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    emulator.create_session("s1")
    assert (await sink.apply("s1", indicator(1))).ok
    emulator.reset()  # forgets tokens, sessions and stats
    result = await sink.apply("s1", indicator(2))
    assert (result.outcome, result.http_status, result.attempts) == (
        Outcome.SESSION_NOT_FOUND,
        404,
        2,
    )
    assert (calls(emulator, "PATCH", 401), calls(emulator, "PATCH", 404)) == (1, 1)
    assert calls(emulator, "TOKEN") == 1
    assert sink.cached_etag("s1") is None


async def test_bad_credentials_are_an_auth_config_error_reported_once(
    emulator: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.create_session("s1")
    wrong = config_for(emulator, client_secret=SecretStr("not-the-secret-42"))
    with caplog.at_level(logging.DEBUG, logger="processor.sink"):
        async with GenesysSink(wrong) as sink:
            first = await sink.apply("s1", indicator(1))
            second = await sink.apply("s1", None)
    for result in (first, second):
        assert result.outcome is Outcome.AUTH_CONFIG_ERROR
        assert result.attempts == 0  # no API call without a token
        assert "not-the-secret-42" not in result.error
    assert calls(emulator, "TOKEN") == 1  # one try; the next apply comes within a second
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "not-the-secret-42" not in caplog.text
    assert "not-the-secret-42" not in repr(sink)
    assert "not-the-secret-42" not in repr(sink.tokens)


async def test_an_api_that_refuses_every_token_costs_no_login_per_call(
    emulator: EmulatorHandle,
) -> None:
    """Tokens from the wrong login (another region or organisation): the 401 of a token
    fetched for the previous 401 stops calls for a while, rather than one login and two
    refused requests per call."""
    clock = FakeMonotonic()
    elsewhere = EmulatorConfig.single_client("other-client", "other-secret")
    async with serve_in_background(elsewhere) as api:
        api.emulator.store.create("s1")
        config = config_for(emulator, api_url=api.base_url)
        async with GenesysSink(config, monotonic=clock) as sink:
            results = [await sink.apply("s1", indicator(1)) for _ in range(5)]
            assert all(r.outcome is Outcome.AUTH_CONFIG_ERROR for r in results)
            assert calls(emulator, "TOKEN") == 2  # the first token, and one for the 401
            assert api.emulator.stats()["total"] == 2  # refused twice, then no more
            assert [r.attempts for r in results] == [2, 0, 0, 0, 0]

            clock.advance(REFUSED_FIRST_RETRY_S)  # then one call tries again, as on a first 401
            again = await sink.apply("s1", indicator(1))
            assert (again.outcome, again.attempts) == (Outcome.AUTH_CONFIG_ERROR, 2)
            assert calls(emulator, "TOKEN") == 3
            assert api.emulator.stats()["total"] == 4
            assert "the next try in 2.0 s" in (await sink.apply("s1", indicator(1))).error


async def test_a_refused_token_is_kept_for_the_try_after_the_pause(
    emulator: EmulatorHandle,
) -> None:
    """A token the API did not know yet (just issued) may be taken a moment later:
    dropping it would make the next try fetch, and be refused, again."""
    clock = FakeMonotonic()
    async with GenesysSink(config_for(emulator), monotonic=clock) as sink:
        token = await sink.tokens.token()
        sink.tokens.refused("another token")  # replaced meanwhile: nothing to hold back
        assert await sink.tokens.token() == token
        sink.tokens.refused(token)
        with pytest.raises(AuthConfigError, match=r"the next try in 1\.0 s"):
            await sink.tokens.token()
        clock.advance(REFUSED_FIRST_RETRY_S)
        assert await sink.tokens.token() == token
        assert sink.tokens.fetches == 1


async def test_refusals_in_a_row_pause_longer_each_time_until_the_api_takes_a_token(
    emulator: EmulatorHandle,
) -> None:
    """The pause after a refused token starts short (a brief double 401 must not hold
    clears for long, I1), doubles with each refusal in a row up to its cap, and starts
    short again once the API takes a token."""
    emulator.create_session("s1")
    clock = FakeMonotonic()
    async with GenesysSink(config_for(emulator), monotonic=clock) as sink:
        token = await sink.tokens.token()
        pauses = []
        for _ in range(6):
            sink.tokens.refused(token)
            sink.tokens.refused(token)  # a request in flight as the pause began: no longer
            with pytest.raises(AuthConfigError, match=r"the next try in") as refused:
                await sink.tokens.token()
            pauses.append(float(str(refused.value).rsplit(" ", 2)[-2]))
            clock.advance(pauses[-1] - 0.01)
            with pytest.raises(AuthConfigError):
                await sink.tokens.token()
            clock.advance(0.01)
            assert await sink.tokens.token() == token
        assert pauses == [1.0, 2.0, 4.0, 8.0, REFUSED_MAX_RETRY_S, REFUSED_MAX_RETRY_S]

        applied = await sink.apply("s1", indicator(1))  # the API takes the token
        assert applied.outcome is Outcome.APPLIED
        sink.tokens.refused(token)
        with pytest.raises(AuthConfigError, match=r"the next try in 1\.0 s"):
            await sink.tokens.token()


async def test_missing_scope_is_an_auth_config_error_without_retries(
    emulator: EmulatorHandle,
) -> None:
    emulator.create_session("s1")
    async with GenesysSink(config_for(emulator, scope="webchat:read")) as sink:
        result = await sink.apply("s1", indicator(1))
    assert (result.outcome, result.http_status, result.attempts) == (
        Outcome.AUTH_CONFIG_ERROR,
        403,
        2,
    )
    assert calls(emulator, "PATCH", 403) == 1


# --- rate limiting ---


async def test_each_request_spends_one_token_and_prepaid_ones_are_not_spent_twice(
    emulator: EmulatorHandle,
) -> None:
    emulator.create_session("s1")
    async with GenesysSink(config_for(emulator, rate_per_minute=600)) as sink:
        assert (await sink.apply("s1", indicator(1))).ok  # GET + PATCH
        assert sink.budget.spent == 2
        assert (await sink.apply("s1", indicator(2), prepaid=1)).ok  # PATCH, paid by caller
        assert sink.budget.spent == 2
        # a call that needs fewer requests than were prepaid gives the rest back
        before = sink.budget.level()
        assert (await sink.apply("s1", indicator(3), prepaid=2)).ok
        assert sink.budget.level() == pytest.approx(before + 1, abs=0.5)


async def test_429_pauses_the_budget_for_retry_after_and_ends_the_call(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    for session_id in ("s1", "s2"):
        emulator.create_session(session_id)
        assert (await sink.apply(session_id, indicator(1))).ok  # ETags cached
    emulator.set_faults(rate_limit_per_minute=60, rate_limit_burst=1)
    assert (await sink.apply("s1", indicator(2))).ok  # the server's burst is spent
    burst_s = sink.budget.burst_s
    throttled = await sink.apply("s1", indicator(3))
    assert (throttled.outcome, throttled.http_status, throttled.attempts) == (
        Outcome.RATE_LIMITED,
        429,
        1,
    )
    assert not throttled.ambiguous  # a 429 changed nothing
    assert sink.budget.paused_for() > 0
    assert sink.budget.burst_s <= burst_s / 2  # its bucket is smaller than what was drawn
    # During the pause nothing goes out: what to send then is decided when it ends.
    held = await sink.apply("s2", indicator(2))
    assert (held.outcome, held.attempts) == (Outcome.RATE_LIMITED, 0)
    assert calls(emulator, "PATCH", 429) == 1


async def test_the_ratelimit_window_headers_cap_the_budget(emulator: EmulatorHandle) -> None:
    emulator.create_session("s1")
    emulator.set_faults(rate_limit_per_minute=3, rate_limit_burst=3)
    async with GenesysSink(config_for(emulator)) as sink:
        assert (await sink.apply("s1", indicator(1))).ok  # GET + PATCH: 2 of 3 counted
        assert sink.budget.level() < 1.1  # what is left of the service's window
        assert (await sink.apply("s1", indicator(2))).ok  # the third: the window is spent
        assert sink.budget.paused_for() > 0  # until the window resets, without a 429
    assert calls(emulator, "PATCH", 429) == 0


async def test_a_change_that_landed_unanswered_is_not_made_twice(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    emulator.create_session("s1")
    assert (await sink.apply("s1", indicator(1))).ok
    # Another writer moves the ETag on: the PATCH gets a 412, and the re-read shows that
    # the session already holds exactly this change (as when an earlier answer was lost).
    wanted = indicator(2)
    async with GenesysSink(config_for(emulator)) as other:
        assert (await other.apply("s1", wanted)).ok
    result = await sink.apply("s1", wanted)
    assert result.outcome is Outcome.APPLIED
    assert calls(emulator, "PATCH", 412) == 1
    assert len([h for h in emulator.history("s1") if h["typing_indicator"]]) == 2


# --- 5xx, timeouts, circuit breaker ---


async def test_a_retry_is_not_sent_once_the_sink_is_held(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    """A PATCH answered 5xx backs off; if the processor's lease lapsed meanwhile (a stall),
    the retry is not sent, and the outcome is unknown (the first may have landed)."""
    emulator.create_session("s1")
    assert (await sink.apply("s1", indicator(1))).ok  # an ETag cached: the next is a PATCH
    answers = iter([False])  # the first request may go; after it, held
    sink.hold_while(lambda: next(answers, True))
    emulator.set_faults(error_rate=1.0, seed=3)
    patches = calls(emulator, "PATCH")
    result = await sink.apply("s1", indicator(2))
    assert result.outcome is Outcome.FAILED
    assert "not confirmed" in result.error
    assert result.ambiguous
    assert calls(emulator, "PATCH") == patches + 1


async def test_5xx_burst_opens_the_breaker_and_a_probe_closes_it(
    emulator: EmulatorHandle,
) -> None:
    emulator.create_session("s1")
    clock = FakeMonotonic()
    config = config_for(
        emulator,
        max_transient_attempts=3,
        breaker_failure_threshold=3,
        breaker_reset_timeout_s=10.0,
    )
    async with GenesysSink(config, monotonic=clock) as sink:
        emulator.set_faults(error_rate=1.0, seed=5)
        failed = await sink.apply("s1", indicator(1))
        assert failed.outcome is Outcome.FAILED
        assert failed.attempts == 3
        assert failed.http_status in (500, 502, 503, 504)
        assert sink.breaker.state is BreakerState.OPEN

        before = emulator.stats()["total"]
        fast = await sink.apply("s1", indicator(1))
        assert (fast.outcome, fast.attempts) == (Outcome.FAILED, 0)
        assert "circuit open" in fast.error
        assert emulator.stats()["total"] == before  # the open breaker spared the API

        clock.advance(10.0)  # half-open: one probe, which fails and reopens
        probe = await sink.apply("s1", indicator(1))
        assert (probe.outcome, probe.attempts) == (Outcome.FAILED, 1)
        assert sink.breaker.state is BreakerState.OPEN

        emulator.set_faults(error_rate=0.0)
        clock.advance(10.0)
        recovered = await sink.apply("s1", indicator(1))
        assert recovered.outcome is Outcome.APPLIED
        assert sink.breaker.state is BreakerState.CLOSED
    assert [c["typing_indicator"]["version"] for c in emulator.history("s1")] == [1]


async def test_half_open_breaker_lets_one_probe_through_under_concurrency(
    emulator: EmulatorHandle,
) -> None:
    for n in range(5):
        emulator.create_session(f"s{n}")
    clock = FakeMonotonic()
    config = config_for(emulator, max_transient_attempts=1, breaker_failure_threshold=1)
    async with GenesysSink(config, monotonic=clock) as sink:
        emulator.set_faults(error_rate=1.0, seed=5)
        assert (await sink.apply("s0", indicator(1))).outcome is Outcome.FAILED
        emulator.set_faults(error_rate=0.0, latency_ms=50)
        clock.advance(config.breaker_reset_timeout_s)
        results = await asyncio.gather(*(sink.apply(f"s{n}", indicator(1)) for n in range(5)))
    outcomes = sorted(result.outcome.value for result in results)
    assert outcomes == ["applied"] + ["failed"] * 4  # the probe got through, nobody else
    assert calls(emulator, "GET", 200) == 1


async def test_a_set_whose_time_passed_does_not_take_the_half_open_breakers_probe(
    emulator: EmulatorHandle,
) -> None:
    """A set that expired before it could go sends nothing: the probe slot stays free, or
    the breaker would stay half-open with no probe out and refuse every call for good."""
    emulator.create_session("s1")
    clock = FakeMonotonic()
    config = config_for(emulator, max_transient_attempts=1, breaker_failure_threshold=1)
    async with GenesysSink(config, monotonic=clock) as sink:
        assert (await sink.apply("s1", indicator(1))).ok  # an ETag cached: the next is a PATCH
        emulator.set_faults(error_rate=1.0, seed=5)
        assert (await sink.apply("s1", indicator(2))).outcome is Outcome.FAILED
        assert sink.breaker.state is BreakerState.OPEN
        emulator.set_faults(error_rate=0.0)
        clock.advance(config.breaker_reset_timeout_s)

        late = await sink.apply("s1", indicator(2, ttl_ms=-1))
        assert (late.outcome, late.attempts) == (Outcome.FAILED, 0)
        assert "time passed" in late.error

        probe = await sink.apply("s1", indicator(2))
        assert probe.outcome is Outcome.APPLIED, probe.error
        assert sink.breaker.state is BreakerState.CLOSED


async def test_a_wait_for_a_pooled_connection_in_vain_is_no_evidence_against_the_api(
    emulator: EmulatorHandle,
) -> None:
    """Every pooled connection busy: the call fails (or retries) as it did, with its
    budget back since nothing went out, and the breaker neither counts it nor loses the
    half-open probe to it."""
    emulator.create_session("s1")
    clock = FakeMonotonic()
    config = config_for(
        emulator,
        max_connections=1,
        max_keepalive_connections=1,
        pool_timeout_s=0.05,
        max_transient_attempts=2,
        breaker_failure_threshold=1,
    )
    busy = f"{emulator.base_url}/emulator/faults"  # an answer left unread holds the connection
    async with GenesysSink(config, monotonic=clock) as sink:
        await sink.tokens.token()  # the login is not what waits
        async with sink.http.stream("GET", busy):
            waited = await sink.apply("s1", indicator(1))
        assert (waited.outcome, waited.attempts, waited.ambiguous) == (Outcome.FAILED, 2, False)
        assert "PoolTimeout" in waited.error
        assert sink.breaker.state is BreakerState.CLOSED
        assert sink.budget.spent == 0
        assert calls(emulator, "GET") == 0

        emulator.set_faults(error_rate=1.0, seed=5)
        assert (await sink.apply("s1", indicator(1))).outcome is Outcome.FAILED
        assert sink.breaker.state is BreakerState.OPEN
        emulator.set_faults(error_rate=0.0)
        clock.advance(config.breaker_reset_timeout_s)
        async with sink.http.stream("GET", busy):
            waited = await sink.apply("s1", indicator(1))
        assert (waited.outcome, waited.attempts) == (Outcome.FAILED, 2)
        assert "PoolTimeout" in waited.error
        assert sink.breaker.state is BreakerState.HALF_OPEN  # its probe not spent on a wait
        probe = await sink.apply("s1", indicator(1))
        assert probe.outcome is Outcome.APPLIED, probe.error
        assert sink.breaker.state is BreakerState.CLOSED


async def _unwritable_api_headers(request: httpx.Request) -> None:
    """Make an API request's headers ones h11 will not write (a line break in a value);
    the login's stay writable."""
    if request.url.path.startswith("/api/"):
        request.headers["X-Unwritable"] = "line\nbreak"


@pytest.mark.parametrize("failure", ["UnsupportedProtocol", "LocalProtocolError"])
async def test_a_request_the_http_library_would_not_write_costs_no_budget(
    emulator: EmulatorHandle, failure: str
) -> None:
    """httpcore raises these before it writes a byte of the request (an URL no transport
    serves; HTTP/1.1 headers it would not build): nothing was sent, so the budget token
    comes back, and the API, never asked, is not blamed for it."""
    emulator.create_session("s1")
    async with contextlib.AsyncExitStack() as stack:
        if failure == "UnsupportedProtocol":
            config = config_for(emulator, api_url=emulator.base_url.replace("http", "ftp", 1))
            http = None
        else:
            config = config_for(emulator)
            http = await stack.enter_async_context(
                httpx.AsyncClient(event_hooks={"request": [_unwritable_api_headers]})
            )
        config = replace(config, breaker_failure_threshold=1)
        sink = await stack.enter_async_context(GenesysSink(config, http=http))
        unpaid = await sink.apply("s1", indicator(1))
        sink.budget.spend(2)  # as the scheduler prepays a GET and a PATCH
        paid = await sink.apply("s1", indicator(1), prepaid=2)
        assert sink.budget.spent == 0
        assert sink.breaker.state is BreakerState.CLOSED
        for result in (unpaid, paid):
            assert (result.outcome, result.attempts) == (Outcome.FAILED, 3)
            assert f"not sent ({failure})" in result.error
    assert emulator.stats()["by_route"].get(f"GET {SESSION_PATH}") is None


async def test_a_proxy_that_will_not_tunnel_sent_nothing_to_the_api(
    emulator: EmulatorHandle,
) -> None:
    """httpcore raises ProxyError only while it sets up the tunnel (CONNECT refused, a
    SOCKS handshake failed), before the request: its budget token comes back; the way to
    the API failing still counts against the breaker, as a refused connection does."""

    async def refuse_to_tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    proxy = await asyncio.start_server(refuse_to_tunnel, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    transport = httpx.AsyncHTTPTransport(proxy=f"http://127.0.0.1:{port}")
    config = config_for(
        emulator,
        api_url="https://api.example.test",
        max_transient_attempts=2,
        breaker_failure_threshold=2,
    )
    async with (
        proxy,
        httpx.AsyncClient(mounts={"https://": transport}) as http,
        GenesysSink(config, http=http) as sink,
    ):
        sink.budget.spend(1)  # as the scheduler prepays a GET
        result = await sink.read_back("s1", prepaid=1)
        assert sink.budget.spent == 0
        assert (result.outcome, result.attempts) == (Outcome.FAILED, 2)
        assert "not sent (ProxyError)" in result.error
        assert sink.breaker.state is BreakerState.OPEN


async def test_transient_5xx_are_retried_with_backoff_until_applied(
    emulator: EmulatorHandle,
) -> None:
    ids = [f"s{n}" for n in range(30)]
    for session_id in ids:
        emulator.create_session(session_id)
    emulator.set_faults(error_rate=0.3, seed=11)
    config = config_for(emulator, max_transient_attempts=8, breaker_failure_threshold=1000)
    async with GenesysSink(config) as sink:
        results = await asyncio.gather(*(sink.apply(sid, indicator(1)) for sid in ids))
    assert all(result.ok for result in results)
    errors = emulator.stats()["by_route"]
    server_errors = sum(
        n for route in errors.values() for status, n in route.items() if status.startswith("5")
    )
    assert server_errors > 0
    assert max(result.attempts for result in results) > 2


async def test_timeouts_are_retried_then_failed(emulator: EmulatorHandle) -> None:
    emulator.create_session("s1")
    emulator.set_faults(latency_ms=400)
    config = config_for(emulator, read_timeout_s=0.05, max_transient_attempts=2)
    async with GenesysSink(config) as sink:
        result = await sink.apply("s1", indicator(1))
    assert (result.outcome, result.attempts, result.http_status) == (Outcome.FAILED, 2, None)
    assert "timed out" in result.error


async def test_closed_sink_refuses_work(emulator: EmulatorHandle) -> None:
    from processor.sink.errors import SinkClosedError

    sink = GenesysSink(config_for(emulator))
    await sink.aclose()
    await sink.aclose()  # idempotent
    with pytest.raises(SinkClosedError):
        await sink.apply("s1", None)


# --- messaging typing (DESIGN §2b) ---

CONV = "c0b5a0d4-5a3f-4a1e-8d6b-6b7a1c2d3e4f"
COMM = "0e9a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
INTEGRATION = "2f0c6a4e-8d8b-4c8e-9a55-0d4c5b7a1e21"


async def test_agent_typing_and_open_messaging_calls_land(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    emulator.create_conversation(CONV, [COMM])
    emulator.create_integration(INTEGRATION)
    agent = await sink.agent_typing(CONV, COMM, 3000)
    assert (agent.outcome, agent.http_status, agent.attempts) == (Outcome.APPLIED, 202, 1)
    customer = await sink.open_messaging_typing(INTEGRATION, "cust-1", "Phone", None, 2500)
    assert (customer.outcome, customer.http_status) == (Outcome.APPLIED, 202)
    [shown] = emulator.typing(conversation_id=CONV)
    assert shown["duration"] == 3000
    [typed] = emulator.typing(integration_id=INTEGRATION, from_id="cust-1")
    assert (typed["from_id_type"], typed["nickname"], typed["duration"]) == ("Phone", None, 2500)


async def test_messaging_refusals_map_to_outcomes(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    unknown = await sink.agent_typing(CONV, COMM, 3000)
    assert (unknown.outcome, unknown.http_status) == (Outcome.SESSION_NOT_FOUND, 404)
    gone = await sink.open_messaging_typing(INTEGRATION, "cust-1", "Opaque", None, 3000)
    assert (gone.outcome, gone.http_status) == (Outcome.SESSION_NOT_FOUND, 404)
    emulator.create_integration(INTEGRATION)
    rejected = await sink.open_messaging_typing(INTEGRATION, "cust-1", "Fax", None, 3000)
    assert (rejected.outcome, rejected.http_status) == (Outcome.REJECTED, 400)
    # unsafe ids never reach the network: no path traversal with the service's token
    unsafe = await sink.agent_typing("../../users", COMM, 3000)
    assert (unsafe.outcome, unsafe.attempts) == (Outcome.REJECTED, 0)
    unsafe = await sink.open_messaging_typing("x/../y", "cust", "Opaque", None, 3000)
    assert (unsafe.outcome, unsafe.attempts) == (Outcome.REJECTED, 0)


async def test_typing_into_an_ended_conversation_is_not_connected_and_not_retried(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    """Genesys answers 409 to typing into a conversation that has ended: the session is
    gone there (forgotten, its calls quietened) as a webchat session not connected is,
    where it was a failure retried after each backoff for as long as the agent typed."""
    emulator.create_conversation(CONV, [COMM])
    assert (await sink.agent_typing(CONV, COMM, 3000)).ok
    emulator.end_conversation(CONV)
    ended = await sink.agent_typing(CONV, COMM, 3000)
    assert (ended.outcome, ended.http_status, ended.attempts) == (
        Outcome.SESSION_NOT_CONNECTED,
        409,
        1,
    )
    assert not ended.ambiguous
    assert len(emulator.typing(conversation_id=CONV)) == 1  # the one before it ended


async def test_messaging_without_its_scope_is_a_clear_auth_error(
    emulator: EmulatorHandle,
) -> None:
    emulator.create_conversation(CONV, [COMM])
    async with GenesysSink(config_for(emulator, scope="webchat:read webchat:write")) as sink:
        result = await sink.agent_typing(CONV, COMM, 3000)
    assert (result.outcome, result.http_status) == (Outcome.AUTH_CONFIG_ERROR, 403)
    assert "conversations" in result.error


async def test_messaging_calls_retry_5xx_and_stop_at_a_429(
    emulator: EmulatorHandle, sink: GenesysSink
) -> None:
    emulator.create_conversation(CONV, [COMM])
    emulator.set_faults(error_rate=1.0)
    failed = await sink.agent_typing(CONV, COMM, 3000)
    assert (failed.outcome, failed.attempts, failed.ambiguous) == (Outcome.FAILED, 3, True)
    emulator.set_faults(error_rate=0.0, rate_limit_per_minute=60, rate_limit_burst=1)
    assert (await sink.agent_typing(CONV, COMM, 3000)).ok
    limited = await sink.agent_typing(CONV, COMM, 3000)
    assert (limited.outcome, limited.http_status) == (Outcome.RATE_LIMITED, 429)
    assert sink.budget.paused_for() > 0
