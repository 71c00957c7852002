"""The emulator's pure parts, driven by a manual clock: store, auth, rate limit, faults."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from processor.clock import ManualClock
from processor.domain import SessionState
from processor.emulator.auth import Authenticator, AuthError, ClientConfig
from processor.emulator.faults import FaultInjector, Faults, FaultsUpdate
from processor.emulator.messaging import MessagingStore
from processor.emulator.ratelimit import RateLimiter
from processor.emulator.store import (
    PreconditionFailed,
    PreconditionRequired,
    SessionExists,
    SessionNotConnected,
    SessionNotFound,
    SessionStore,
    normalise_etag,
)

INDICATOR = {"status": "typing", "originatedAt": 1, "expiresAt": 5001, "version": 1}


# --- store ---


def test_patch_merges_and_bumps_etag_and_records_history() -> None:
    clock = ManualClock(1_000)
    store = SessionStore(clock)
    session = store.create("s1", custom_attributes={"crmId": "42"})
    first = session.etag

    clock.advance(10)
    store.patch("s1", first, {"typingIndicator": INDICATOR})
    second = store.get("s1").etag
    assert second != first
    assert store.get("s1").custom_attributes == {"crmId": "42", "typingIndicator": INDICATOR}

    clock.advance(5)
    store.patch("s1", second, {"typingIndicator": None})
    assert store.get("s1").custom_attributes == {"crmId": "42"}

    history = [change.to_json() for change in store.get("s1").history]
    assert [(h["at_ms"], h["typing_indicator"]) for h in history] == [
        (1_010, INDICATOR),
        (1_015, None),
    ]
    assert history[-1]["etag"] == store.get("s1").etag


def test_write_that_changes_nothing_gets_a_new_etag_but_no_history() -> None:
    store = SessionStore(ManualClock())
    etag = store.create("s1").etag
    store.patch("s1", etag, {"other": "x"})
    assert store.get("s1").etag != etag
    assert list(store.get("s1").history) == []


def test_a_long_lived_session_keeps_its_latest_changes_and_counts_the_dropped() -> None:
    """A long-running emulator must not grow without limit: by default each session keeps
    its latest thousand changes (oldest dropped first) and says how many it dropped."""
    clock = ManualClock(0)
    store = SessionStore(clock)
    store.create("s1")
    for n in range(1_500):
        clock.advance(1)
        store.admin_merge("s1", {"typingIndicator": INDICATOR if n % 2 == 0 else None})
    session = store.get("s1")
    assert len(session.history) == 1_000
    assert [session.history[0].at_ms, session.history[-1].at_ms] == [501, 1_500]
    assert session.history_dropped == 500

    small = SessionStore(clock, history_kept=2)
    etag = small.create("s1").etag
    for indicator in (INDICATOR, None, INDICATOR):
        clock.advance(1)
        etag = small.patch("s1", etag, {"typingIndicator": indicator}).etag
    assert [change.typing_indicator for change in small.get("s1").history] == [None, INDICATOR]
    assert small.get("s1").history_dropped == 1
    with pytest.raises(ValueError, match="history_kept"):
        SessionStore(clock, history_kept=-1)


def test_preconditions_in_order() -> None:
    store = SessionStore(ManualClock())
    with pytest.raises(SessionNotFound):
        store.patch("nope", "x", {})
    etag = store.create("s1").etag
    with pytest.raises(PreconditionRequired):
        store.patch("s1", None, {})
    with pytest.raises(PreconditionFailed):
        store.patch("s1", etag + "0", {})
    store.set_state("s1", SessionState.CLOSED)
    with pytest.raises(PreconditionFailed):
        store.patch("s1", etag, {})  # the state change bumped the ETag
    with pytest.raises(SessionNotConnected):
        store.patch("s1", store.get("s1").etag, {})
    with pytest.raises(SessionExists):
        store.create("s1")


def test_set_state_bumps_etag_only_on_change() -> None:
    store = SessionStore(ManualClock())
    etag = store.create("s1").etag
    assert store.set_state("s1", SessionState.CONNECTED).etag == etag
    assert store.set_state("s1", SessionState.QUEUED).etag != etag


def test_quoted_and_weak_if_match_are_accepted() -> None:
    store = SessionStore(ManualClock())
    etag = store.create("s1").etag
    assert normalise_etag(f'W/"{etag}"') == etag
    store.patch("s1", f'"{etag}"', {"a": "b"})


def test_etags_of_two_stores_never_collide() -> None:
    assert (
        SessionStore(ManualClock()).create("s").etag != SessionStore(ManualClock()).create("s").etag
    )


# --- auth ---


def _auth(clock: ManualClock) -> Authenticator:
    client = ClientConfig(client_id="c", client_secret=SecretStr("s"))
    return Authenticator((client,), clock)


def test_token_expires_with_its_lifetime() -> None:
    clock = ManualClock()
    auth = _auth(clock)
    issued = auth.issue("c", "s", None, lifetime_s=60)
    assert issued.expires_in == 60
    assert "webchat:write:session" in issued.scopes
    header = f"Bearer {issued.access_token}"
    assert auth.grant_for(header) is not None
    clock.advance(59_999)
    assert auth.grant_for(header) is not None
    clock.advance(1)
    assert auth.grant_for(header) is None
    assert auth.grant_for("Bearer unknown") is None
    assert auth.grant_for(None) is None


def test_wrong_credentials_and_scopes() -> None:
    auth = _auth(ManualClock())
    with pytest.raises(AuthError) as bad_secret:
        auth.issue("c", "wrong", None, lifetime_s=60)
    assert bad_secret.value.status == 401
    with pytest.raises(AuthError) as unknown:
        auth.issue("nobody", "s", None, lifetime_s=60)
    assert unknown.value.status == 401
    with pytest.raises(AuthError) as scope:
        auth.issue("c", "s", "webchat:read admin:everything", lifetime_s=60)
    assert scope.value.status == 400
    issued = auth.issue("c", "s", "webchat:read", lifetime_s=60)
    grant = auth.grant_for(f"Bearer {issued.access_token}")
    assert grant is not None
    assert grant.scopes == frozenset({"webchat:read"})


def test_secrets_stay_out_of_reprs() -> None:
    auth = _auth(ManualClock())
    issued = auth.issue("c", "s", None, lifetime_s=60)
    assert issued.access_token not in repr(issued)
    assert issued.access_token not in repr(auth)
    client = ClientConfig(client_id="c", client_secret=SecretStr("very-secret"))
    assert "very-secret" not in repr(client)


# --- rate limit ---


def test_bucket_admits_burst_then_sustained_rate() -> None:
    clock = ManualClock()
    limiter = RateLimiter(per_minute=60, burst=3, clock=clock)
    decisions = [limiter.check("c") for _ in range(4)]
    assert [d.allowed for d in decisions if d] == [True, True, True, False]
    refused = decisions[-1]
    assert refused is not None
    assert refused.headers()["Retry-After"] == "1"
    assert refused.headers()["inin-ratelimit-count"] == "3"
    assert refused.headers()["inin-ratelimit-allowed"] == "60"
    assert refused.headers()["inin-ratelimit-reset"] == "60"
    # another client has its own budget
    other = limiter.check("other")
    assert other is not None
    assert other.allowed
    clock.advance(1_000)  # one token refilled
    again = limiter.check("c")
    assert again is not None
    assert again.allowed
    assert again.headers()["inin-ratelimit-reset"] == "59"
    refused_again = limiter.check("c")
    assert refused_again is not None
    assert not refused_again.allowed


def test_window_resets_after_a_minute_and_zero_switches_off() -> None:
    clock = ManualClock()
    limiter = RateLimiter(per_minute=600, burst=5, clock=clock)
    for _ in range(5):
        limiter.check("c")
    clock.advance(60_000)
    decision = limiter.check("c")
    assert decision is not None
    assert decision.allowed
    assert decision.count == 1
    limiter.configure(per_minute=0, burst=5)
    assert limiter.check("c") is None


def test_headers_never_count_more_than_allowed_and_retry_after_admits() -> None:
    """The bucket's burst on top of a minute's rate would admit more calls in the window
    than the headers allow; a client following the headers must never see an admitted
    call counted beyond `allowed`, and waiting `Retry-After` must admit the next call."""
    clock = ManualClock()
    limiter = RateLimiter(per_minute=300, burst=25, clock=clock)
    admitted = refused = 0
    for _ in range(600):  # one call every 100 ms for a minute: twice the sustained rate
        decision = limiter.check("c")
        assert decision is not None
        headers = decision.headers()
        count = int(headers["inin-ratelimit-count"])
        allowed = int(headers["inin-ratelimit-allowed"])
        if decision.allowed:
            admitted += 1
            assert count <= allowed, f"admitted call {admitted} counted {count} of {allowed}"
        else:
            refused += 1
        clock.advance(100)
    assert (admitted, refused) == (300, 300)  # the minute's allowance, not a burst more


def test_retry_after_is_when_the_call_is_admitted_again() -> None:
    clock = ManualClock()
    limiter = RateLimiter(per_minute=300, burst=25, clock=clock)
    for _ in range(600):  # a call every 100 ms: twice the sustained rate
        decision = limiter.check("c")
        assert decision is not None
        if not decision.allowed:
            # an empty bucket: waiting `Retry-After` refills a token
            retry_after_ms = int(decision.headers()["Retry-After"]) * 1000
            if decision.count >= 300:
                break
            assert retry_after_ms == 1000
        clock.advance(100)
    assert not decision.allowed, "never refused for a spent window within a minute"
    # the window is spent although the bucket has refilled: refused until the window resets
    assert decision.count == 300
    retry_after_ms = int(decision.headers()["Retry-After"]) * 1000
    assert retry_after_ms == decision.reset_s * 1000
    clock.advance(retry_after_ms - 1_000)
    early = limiter.check("c")
    assert early is not None
    assert not early.allowed
    clock.advance(1_000)
    again = limiter.check("c")
    assert again is not None
    assert again.allowed
    assert again.count == 1


# --- faults ---


def _decisions(injector: FaultInjector, n: int) -> list[tuple[int | None, bool, float]]:
    return [(injector.error_status(), injector.conflict(), injector.delay_s()) for _ in range(n)]


def test_faults_are_deterministic_with_a_seed() -> None:
    faults = Faults(error_rate=0.5, conflict_rate=0.3, latency_ms=5, jitter_ms=10, seed=7)
    first = _decisions(FaultInjector(faults), 200)
    assert first == _decisions(FaultInjector(faults), 200)
    errors = [status for status, _, _ in first if status is not None]
    assert 50 < len(errors) < 150
    assert set(errors) <= {500, 502, 503, 504}
    assert all(0.005 <= delay <= 0.015 for _, _, delay in first)


def test_reseeding_replays_and_no_faults_means_no_draws() -> None:
    injector = FaultInjector(Faults(error_rate=0.5, seed=1))
    first = _decisions(injector, 20)
    injector.update(injector.faults, reseed=True)
    assert _decisions(injector, 20) == first
    quiet = FaultInjector(Faults())
    assert _decisions(quiet, 5) == [(None, False, 0.0)] * 5


def test_fault_update_merges_and_validates() -> None:
    faults = FaultsUpdate(error_rate=0.25).apply_to(Faults(latency_ms=3))
    assert (faults.error_rate, faults.latency_ms) == (0.25, 3)
    with pytest.raises(ValidationError):
        FaultsUpdate(error_rate=1.5)
    with pytest.raises(ValidationError):
        FaultsUpdate.model_validate({"nonsense": 1})


# --- messaging typing calls ---


class _Unread(deque[dict[str, Any]]):
    """Every call of every target: a query of one target must not read it through."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        raise AssertionError("a query of one target read every target's calls")


def test_a_query_reads_only_its_targets_calls() -> None:
    # the demo asks for every target's calls, again and again: reading all of them each
    # time was quadratic (seconds per round at 500 targets, on the processor's event loop)
    store = MessagingStore(kept=1000)
    for n in range(300):
        store.record(n, 5000, kind="agent_typing", conversation_id=f"conv-{n % 3}")
        store.record(n, 4000, kind="open_messaging", integration_id="int-1", from_id=f"f{n % 2}")
    store.calls = _Unread(store.calls, maxlen=store.calls.maxlen)
    assert [c["at_ms"] for c in store.query(conversation_id="conv-1")] == list(range(1, 300, 3))
    assert len(store.query(integration_id="int-1")) == 300
    assert [c["at_ms"] for c in store.query(integration_id="int-1", from_id="f1")] == list(
        range(1, 300, 2)
    )
    assert store.query(conversation_id="conv-9") == []


def test_typing_calls_beyond_the_kept_number_go_oldest_first_from_every_view() -> None:
    store = MessagingStore(kept=4)
    for n in range(6):
        store.record(n, 1000, kind="agent_typing", conversation_id=f"conv-{n % 2}")
    assert [c["at_ms"] for c in store.calls] == [2, 3, 4, 5]
    assert [c["at_ms"] for c in store.query(conversation_id="conv-0")] == [2, 4]
    assert [c["at_ms"] for c in store.query(conversation_id="conv-1")] == [3, 5]
    for n in range(6, 10):
        store.record(n, 1000, kind="open_messaging", integration_id="int-1", from_id="f")
    assert store.query(conversation_id="conv-0") == []
    assert [c["at_ms"] for c in store.query(integration_id="int-1", from_id="f")] == [6, 7, 8, 9]
    store.clear()
    assert store.query(integration_id="int-1") == []
    nothing_kept = MessagingStore(kept=0)
    nothing_kept.record(1, 1000, kind="agent_typing", conversation_id="conv-0")
    assert nothing_kept.query(conversation_id="conv-0") == []
