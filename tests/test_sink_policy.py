"""Pure policy of the Genesys sink: backoff, breaker, ETag cache, config."""

from __future__ import annotations

import random

import pytest
from pydantic import SecretStr

from processor.settings import load_genesys, load_typing
from processor.sink.backoff import Backoff
from processor.sink.breaker import BreakerState, CircuitBreaker
from processor.sink.config import SinkConfig
from processor.sink.etags import ETagCache


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


def test_backoff_cap_below_the_base_bounds_every_delay() -> None:
    backoff = Backoff(1.0, 0.5, random.Random(3))
    assert [backoff.ceiling(n) for n in (0, 1, 10_000)] == [0.5, 0.5, 0.5]
    assert all(0.0 <= backoff.delay(n) <= 0.5 for n in range(100))


def test_backoff_cap_zero_retries_at_once() -> None:
    """A cap of 0 (the CRM webhook's "retry at once") makes every delay 0, however many
    retries came before (no float overflow past 2**1024 either)."""
    backoff = Backoff(0.2, 0.0)
    assert {backoff.delay(n) for n in (0, 1, 1023, 1024, 10_000)} == {0.0}


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="base_s"):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError, match="base_s"):
        Backoff(-0.1, 1.0)
    with pytest.raises(ValueError, match="cap_s"):
        Backoff(0.1, -1.0)


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


def test_breaker_counts_the_requests_in_flight_at_a_failure_as_that_failure() -> None:
    """A dropped HTTP/2 connection fails every stream on it at once: one event, not five."""
    clock = FakeMonotonic()
    breaker = CircuitBreaker(3, 10.0, clock)
    sent_at = clock()
    clock.advance(0.5)
    for _ in range(6):  # every request in flight when the connection went
        breaker.record_failure(sent_at)
    assert breaker.state is BreakerState.CLOSED
    clock.advance(0.1)
    breaker.record_failure(clock())  # a retry sent after it, failing again: more evidence
    clock.advance(0.1)
    breaker.record_failure(clock())
    assert breaker.state is BreakerState.OPEN


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


def test_breaker_half_open_ignores_a_late_failure_of_a_request_sent_before_it_opened() -> None:
    """A request in flight when the breaker opened fails after its timeout: that is no
    verdict on the probe, which is still out (reopening would free its slot)."""
    clock = FakeMonotonic()
    breaker = CircuitBreaker(1, 5.0, clock)
    early = clock()
    clock.advance(0.1)
    breaker.record_failure(clock())
    clock.advance(5.0)
    assert breaker.allow()  # the probe
    breaker.record_failure(early)
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()
    breaker.record_failure(clock())  # the probe's own failure does reopen
    assert breaker.state is BreakerState.OPEN


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
    probe = breaker.allow()
    assert probe
    breaker.abandon(probe)
    assert breaker.allow()
    assert not breaker.allow()


def test_breaker_abandon_by_a_caller_that_is_not_the_probe_frees_nothing() -> None:
    """A call let through while closed gives up (a 429 pause, cancelled) after the breaker
    opened and half-opened: the probe is still out, so nobody else may go."""
    clock = FakeMonotonic()
    breaker = CircuitBreaker(1, 1.0, clock)
    early = breaker.allow()
    assert early
    breaker.record_failure()
    clock.advance(1.0)
    probe = breaker.allow()
    assert probe
    breaker.abandon(early)
    assert not breaker.allow()
    # nor does an earlier probe's permit, once a later probe is out
    breaker.record_failure()
    clock.advance(1.0)
    assert breaker.allow()
    breaker.abandon(probe)
    assert not breaker.allow()


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
    monkeypatch.delenv("GENESYSCLOUD_OAUTH_SCOPES", raising=False)
    config = SinkConfig.from_settings(load_genesys(), load_typing(), max_conflict_attempts=5)
    assert config.api_url == "https://api.mypurecloud.ie"
    assert config.token_url == "https://login.mypurecloud.ie/oauth/token"
    assert config.session_url("s1") == "https://api.mypurecloud.ie/api/v2/webchat/sessions/s1"
    assert config.rate_per_minute == 120
    assert config.scope is None  # no GENESYSCLOUD_OAUTH_SCOPES: no scope asked for
    assert config.max_conflict_attempts == 5
    assert config.client_secret.get_secret_value() == "very-secret-value"
    assert "very-secret-value" not in repr(config)
    assert "client-x" not in repr(config)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_conflict_attempts"):
        SinkConfig("http://a", "http://b", "id", SecretStr("s"), max_conflict_attempts=0)


def test_config_asks_for_the_configured_scopes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_ID", "client-x")
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", "very-secret-value")
    monkeypatch.setenv("GENESYSCLOUD_OAUTH_SCOPES", "conversations messaging")
    config = SinkConfig.from_settings(load_genesys(), load_typing())
    assert config.scope == "conversations messaging"
