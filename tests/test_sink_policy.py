"""Pure policy of the Genesys sink: backoff, breaker, token bucket, limiter, ETag cache, config."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from pydantic import SecretStr

from processor.settings import load_genesys, load_typing
from processor.sink.backoff import Backoff
from processor.sink.breaker import BreakerState, CircuitBreaker
from processor.sink.config import SinkConfig
from processor.sink.etags import ETagCache
from processor.sink.ratelimit import Priority, RateLimiter, TokenBucket


class FakeMonotonic:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- backoff ---


def test_backoff_ceiling_doubles_then_caps() -> None:
    backoff = Backoff(0.1, 1.0)
    assert [backoff.ceiling(n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.ceiling(10_000) == 1.0


def test_backoff_full_jitter_spans_zero_to_ceiling() -> None:
    backoff = Backoff(0.1, 10.0, random.Random(7))
    delays = [backoff.delay(3) for _ in range(2000)]
    assert all(0.0 <= d <= 0.8 for d in delays)
    # full jitter: the whole range is used, not just the top (equal jitter) or one value
    assert min(delays) < 0.05
    assert max(delays) > 0.75


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="base_s"):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError, match="base_s"):
        Backoff(1.0, 0.5)


# --- circuit breaker ---


def test_breaker_opens_after_consecutive_failures_only() -> None:
    clock = FakeMonotonic()
    breaker = CircuitBreaker(3, 10.0, clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # a success in between resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.retry_in() == pytest.approx(10.0)


def test_breaker_half_opens_with_exactly_one_probe() -> None:
    clock = FakeMonotonic()
    breaker = CircuitBreaker(1, 5.0, clock)
    breaker.record_failure()
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # nobody else while the probe is out
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    assert breaker.allow()


def test_breaker_failed_probe_reopens_for_a_full_timeout() -> None:
    clock = FakeMonotonic()
    breaker = CircuitBreaker(2, 5.0, clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.advance(4.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()


def test_breaker_abandoned_probe_lets_another_through() -> None:
    clock = FakeMonotonic()
    breaker = CircuitBreaker(1, 1.0, clock)
    breaker.record_failure()
    clock.advance(1.0)
    assert breaker.allow()
    breaker.abandon()
    assert breaker.allow()
    assert not breaker.allow()


# --- token bucket (pure arithmetic) ---


def test_bucket_spends_burst_then_refills_at_rate() -> None:
    bucket = TokenBucket(rate_per_s=2.0, capacity=3, now=0.0)
    assert [bucket.try_take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_time(0.0) == pytest.approx(0.5)
    assert not bucket.try_take(0.49)
    assert bucket.try_take(0.5)
    # never more than the capacity, however long it was idle
    assert [bucket.try_take(100.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_pause_spends_nothing_and_restarts_empty() -> None:
    bucket = TokenBucket(rate_per_s=10.0, capacity=5, now=0.0)
    bucket.pause_until(3.0)
    assert bucket.wait_time(1.0) == pytest.approx(2.0 + 0.1)
    assert not bucket.try_take(2.99)
    assert not bucket.try_take(3.0)  # empty at the end of the pause: no burst
    assert bucket.try_take(3.1)
    bucket.pause_until(1.0)  # an earlier end never shortens a pause in force
    assert bucket.resumes_at == pytest.approx(3.1)


# --- rate limiter (asyncio) ---


async def test_limiter_serves_clears_before_sets_when_budget_is_short() -> None:
    limiter = RateLimiter(rate_per_minute=6000, burst=1)  # one call per 10 ms
    assert await limiter.acquire()
    order: list[str] = []

    async def caller(name: str, priority: Priority) -> None:
        assert await limiter.acquire(priority)
        order.append(name)

    names = [("set1", Priority.NORMAL), ("set2", Priority.NORMAL), ("set3", Priority.NORMAL)]
    names += [("clear1", Priority.HIGH), ("clear2", Priority.HIGH)]
    async with asyncio.timeout(5):
        await asyncio.gather(*(caller(name, priority) for name, priority in names))
    assert order == ["clear1", "clear2", "set1", "set2", "set3"]
    assert limiter.waiting == 0


async def test_limiter_pause_holds_every_caller_until_it_ends() -> None:
    limiter = RateLimiter(rate_per_minute=600_000, burst=100)
    limiter.pause(0.3)
    assert limiter.paused_for() > 0.2
    started = time.monotonic()
    async with asyncio.timeout(5):
        results = await asyncio.gather(*(limiter.acquire() for _ in range(3)))
    assert results == [True, True, True]
    assert time.monotonic() - started >= 0.29
    assert limiter.paused_for() == 0.0


async def test_limiter_gives_up_at_once_when_budget_comes_too_late() -> None:
    limiter = RateLimiter(rate_per_minute=600_000, burst=10)
    limiter.pause(30.0)
    started = time.monotonic()
    assert not await limiter.acquire(Priority.HIGH, max_wait_s=1.0)
    assert not await limiter.acquire(Priority.NORMAL, max_wait_s=0.0)
    assert time.monotonic() - started < 0.5  # did not sleep until the deadline
    assert limiter.waiting == 0


async def test_limiter_cancelled_waiter_hands_over_to_the_next() -> None:
    limiter = RateLimiter(rate_per_minute=600, burst=1)  # one call per 100 ms
    assert await limiter.acquire()
    first = asyncio.create_task(limiter.acquire(Priority.HIGH))
    second = asyncio.create_task(limiter.acquire(Priority.NORMAL))
    await asyncio.sleep(0)  # let both queue up
    first.cancel()
    async with asyncio.timeout(5):
        assert await second
    assert first.cancelled()
    assert limiter.waiting == 0


# --- ETag cache ---


def test_etag_cache_is_lru_bounded_and_droppable() -> None:
    cache = ETagCache(2)
    cache.put("a", "e1")
    cache.put("b", "e2")
    assert cache.get("a") == "e1"  # a is now the most recently used
    cache.put("c", "e3")
    assert "b" not in cache
    assert (cache.get("a"), cache.get("c")) == ("e1", "e3")
    cache.put("a", "e4")
    assert cache.get("a") == "e4"
    cache.drop("a")
    cache.drop("unknown")
    assert cache.get("a") is None
    assert len(cache) == 1


# --- config ---


def test_config_from_settings_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_ID", "client-x")
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", "very-secret-value")
    monkeypatch.setenv("GENESYSCLOUD_REGION", "eu-west-1")
    monkeypatch.setenv("TYPING_API_RATE_PER_MINUTE", "120")
    config = SinkConfig.from_settings(load_genesys(), load_typing(), max_conflict_attempts=5)
    assert config.api_url == "https://api.mypurecloud.ie"
    assert config.token_url == "https://login.mypurecloud.ie/oauth/token"
    assert config.session_url("s1") == "https://api.mypurecloud.ie/api/v2/webchat/sessions/s1"
    assert config.rate_per_minute == 120
    assert config.effective_burst == 10
    assert config.max_conflict_attempts == 5
    assert config.client_secret.get_secret_value() == "very-secret-value"
    assert "very-secret-value" not in repr(config)
    assert "client-x" not in repr(config)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_conflict_attempts"):
        SinkConfig("http://a", "http://b", "id", SecretStr("s"), max_conflict_attempts=0)
