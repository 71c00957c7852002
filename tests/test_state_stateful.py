"""Stateful property test of `PartitionStore` against a small independent model.

Random events (duplicates, out of order, stale, clock ahead), clock advances with ticks,
calls taken and answered with every sink outcome (with latencies, which set how early an
expiry clear goes out), and crash-restores from the changelog.
After every step: the store's wanted state equals the model's (the last event's), every
remote indicator that disagrees with it is being reconciled (no phantom, no lapse while
typing), work is unique per session, and restoring the changelog gives an equal store.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from processor.clock import ManualClock
from processor.domain import Indicator, Outcome, SinkResult, Status
from processor.models import TypingEvent
from processor.state import EngineConfig, PartitionStore, Work, WorkKind

settings.register_profile(
    "state-ci", max_examples=400, stateful_step_count=60, deadline=None, derandomize=True
)
settings.register_profile("state-dev", max_examples=150, stateful_step_count=50, deadline=None)

T0 = 1_700_000_000_000
SESSIONS = ("s0", "s1", "s2")
# Exact timers keep the invariants exact; rounding to buckets is unit-tested on its own.
CONFIG = EngineConfig(timer_resolution_ms=1, min_set_lifetime_ms=0)
_GONE = (Outcome.SESSION_NOT_FOUND, Outcome.SESSION_NOT_CONNECTED, Outcome.REJECTED)
DEFAULTS = {Status.TYPING: 5000, Status.PAUSED: 2000}


class Model:
    """What each session should want, from the events alone (DESIGN §4 rules)."""

    def __init__(self) -> None:
        self.latest: dict[str, int] = {}
        self.status: dict[str, Status | None] = {}
        self.deadline: dict[str, int] = {}
        self.timeout: dict[str, int] = {}
        self.seen: set[str] = set()

    def wanted(self, sid: str, now: int) -> Status | None:
        status = self.status.get(sid)
        return status if status is not None and self.deadline[sid] > now else None

    def in_clear_lead(self, sid: str, now: int) -> bool:
        """Within the last stretch before the deadline where a shown indicator's clear may
        already be out (at most the configured lead and a twentieth of the timeout)."""
        if self.wanted(sid, now) is None:
            return False
        lead = min(CONFIG.clear_lead_max_ms, self.timeout[sid] // 20)
        return self.deadline[sid] - now <= lead

    def apply(self, event: TypingEvent, now: int) -> None:
        sid = event.session_id
        if event.event_id in self.seen:
            return
        self.seen.add(event.event_id)
        occurred = min(event.occurred_at, now)  # a producer clock ahead is clamped
        if occurred < self.latest.get(sid, -1):
            return  # an older event never overrides a newer one
        self.latest[sid] = occurred
        current = self.wanted(sid, now)
        if event.status is Status.STOPPED:
            self.status[sid] = None
            return
        timeout = event.timeout_ms or DEFAULTS[event.status]
        deadline = min(event.occurred_at, now) + timeout
        if deadline <= now:  # stale: never sets; a newer other status clears
            if current is not event.status:
                self.status[sid] = None
            return
        if current is event.status:
            if deadline > self.deadline[sid]:  # a repeat that extends nothing changes nothing
                self.deadline[sid] = deadline
                self.timeout[sid] = timeout
        else:
            self.status[sid] = event.status
            self.deadline[sid] = deadline
            self.timeout[sid] = timeout

    def forget(self, sid: str) -> None:
        self.latest.pop(sid, None)
        self.status.pop(sid, None)
        self.deadline.pop(sid, None)
        self.timeout.pop(sid, None)


class StoreMachine(RuleBasedStateMachine):
    """Drives one store, a fake Genesys and the model side by side."""

    @initialize()
    def start(self) -> None:
        self.clock = ManualClock(T0)
        self.store = PartitionStore(0, CONFIG, self.clock)
        self.model = Model()
        self.remote: dict[str, Indicator | None] = {}
        self.flying: list[Work] = []
        self.log: list[tuple[bytes, bytes | None]] = []
        self.crm_version: dict[str, int] = {}
        self.counter = 0
        self.offset = 0
        self.sent: set[str] = set()
        self.audited: set[str] = set()

    # -------------------------------------------------------------- helpers

    def _drain(self) -> None:
        out = self.store.drain()
        self.log += out.changelog
        self.audited.update(a.event_id for a in out.audits if a.event_id is not None)
        for change in out.changes:
            sid = change.session_id
            # forgotten sessions included: their versions never repeat (I6)
            previous = self.crm_version.get(sid, 0)
            assert change.version == previous + 1, "versions increase by one per change"
            self.crm_version[sid] = change.version

    def _apply_remotely(self, work: Work) -> None:
        if work.kind is not WorkKind.RESOLVE:
            self.remote[work.session_id] = work.desired

    # -------------------------------------------------------------- rules

    @rule(
        sid=st.sampled_from(SESSIONS),
        status=st.sampled_from(list(Status)),
        delta=st.integers(-7000, 300),
        timeout=st.sampled_from([None, None, 500, 1000, 2000]),
        reuse=st.integers(0, 9),
    )
    def event(self, sid: str, status: Status, delta: int, timeout: int | None, reuse: int) -> None:
        if reuse == 0 and self.counter:
            event_id = f"e{self.counter - 1}"  # an exact duplicate of the previous event
        else:
            event_id = f"e{self.counter}"
            self.counter += 1
        event = TypingEvent.model_construct(
            event_id=event_id,
            session_id=sid,
            status=status,
            occurred_at=max(0, self.clock.now_ms() + delta),
            timeout_ms=timeout,
            participant=None,
            channel=None,
        )
        self.offset += 1
        self.model.apply(event, self.clock.now_ms())
        self.sent.add(event_id)
        self.store.on_event(event, self.offset)
        self._drain()

    @rule(ms=st.integers(1, 3000))
    def advance(self, ms: int) -> None:
        self.clock.advance(ms)
        self.store.on_tick()
        self._drain()

    @rule(ms=st.integers(CONFIG.idle_evict_ms - 60_000, CONFIG.idle_evict_ms + 60_000))
    def idle_for_minutes(self, ms: int) -> None:
        """Long enough for idle sessions to be forgotten (their versions stay behind)."""
        self.clock.advance(ms)
        self.store.on_tick()
        self._drain()

    @rule(sid=st.sampled_from(SESSIONS), before=st.integers(0, 300))
    def advance_near_a_deadline(self, sid: str, before: int) -> None:
        """Into the last stretch before a deadline, where an expiry's clear goes out."""
        at = self.model.deadline.get(sid, 0) - before
        if at > self.clock.now_ms():
            self.clock.set(at)
            self.store.on_tick()
            self._drain()

    @rule(limit=st.integers(1, 3))
    def take(self, limit: int) -> None:
        now = self.clock.now_ms()
        works = self.store.take_work(limit)
        sids = [w.session_id for w in works]
        assert len(sids) == len(set(sids)), "one piece of work per session"
        assert not set(sids) & {w.session_id for w in self.flying}, "calls never overlap"
        first = (WorkKind.RESOLVE, WorkKind.CLEAR)
        kinds = [w.kind in first for w in works]
        assert kinds == sorted(kinds, reverse=True), "read-backs and clears go before sets"
        for work in works:
            if work.kind is WorkKind.RESOLVE:
                continue  # reads only; what it resolves was checked when it was taken
            wanted = self.model.wanted(work.session_id, now)
            if work.desired is None:
                early = self.model.in_clear_lead(work.session_id, now)
                assert wanted is None or early, "never clear while the indicator is wanted"
            else:
                assert work.desired.status is wanted
                assert now < work.desired.expires_at <= self.model.deadline[work.session_id]
        self.flying += works
        self._drain()

    @precondition(lambda self: bool(self.flying))
    @rule(
        index=st.integers(0, 5),
        outcome=st.sampled_from([*Outcome, Outcome.APPLIED, Outcome.FAILED]),
        reached=st.booleans(),
        latency=st.sampled_from([0.0, 20.0, 60.0, 400.0]),
    )
    def result(self, index: int, outcome: Outcome, reached: bool, latency: float) -> None:
        work = self.flying.pop(index % len(self.flying))
        sid = work.session_id
        if outcome is Outcome.OVERTAKEN and work.kind is WorkKind.RESOLVE:
            outcome = Outcome.FAILED  # only a change-making call can find itself overtaken
        if outcome is Outcome.OVERTAKEN:
            # another writer (a previous owner during a rebalance) made this version, or a
            # later one, and recorded it itself
            now = self.clock.now_ms()
            theirs = Indicator(
                Status.TYPING, now, now + 1000 * (1 + index), work.version + index % 2
            )
            self.remote[sid] = theirs
            self.crm_version[sid] = theirs.version
            result = SinkResult(outcome, http_status=200, attempts=1, remote_indicator=theirs)
        elif work.kind is WorkKind.RESOLVE and outcome is Outcome.APPLIED:
            # a read-back tells what Genesys holds
            result = SinkResult(outcome, http_status=200, remote_indicator=self.remote.get(sid))
        else:
            if outcome is Outcome.APPLIED or (outcome is Outcome.FAILED and reached):
                self._apply_remotely(work)  # a failure may still have reached Genesys
            elif outcome in _GONE:
                self.remote.pop(sid, None)  # closed or unusable: nothing shows
            ambiguous = outcome is Outcome.FAILED and (reached or index % 2 == 0)
            result = SinkResult(
                outcome, http_status=200, attempts=1, ambiguous=ambiguous,
                call_latencies_ms=(latency,),  # teaches the store its clear lead
            )  # fmt: skip
        if outcome in _GONE:
            self.remote.pop(sid, None)
            self.model.forget(sid)
        self.store.on_result(work, result)
        self._drain()

    @rule(reached=st.lists(st.booleans(), min_size=3, max_size=3))
    def crash_and_restore(self, reached: list[bool]) -> None:
        for work, hit in zip(self.flying, reached, strict=False):
            if hit:
                self._apply_remotely(work)  # applied, but the result was lost in the crash
        self.flying = []
        self.store = PartitionStore.restore(0, CONFIG, self.clock, self.log)
        self.model.seen.clear()  # event-id memory is not persisted
        self._drain()

    # -------------------------------------------------------------- invariants

    @invariant()
    def wanted_state_is_the_last_events(self) -> None:
        now = self.clock.now_ms()
        for sid in SESSIONS:
            wanted = self.store.desired(sid)
            if wanted is None and self.model.in_clear_lead(sid, now):
                continue  # an expiry's clear may go out this early
            assert wanted is self.model.wanted(sid, now), sid

    @invariant()
    def disagreement_is_always_being_reconciled(self) -> None:
        """No phantom and no lapse while typing: any gap is queued, in flight or retrying."""
        now = self.clock.now_ms()
        for sid in SESSIONS:
            store = self.store
            pending = store.is_queued(sid) or store.is_in_flight(sid) or store.is_backing_off(sid)
            shown = self.remote.get(sid)
            wanted = self.model.wanted(sid, now)
            if self.model.in_clear_lead(sid, now) and store.desired(sid) is None:
                wanted = None  # expired early: the clear lands as the deadline passes
            if (shown is None) != (wanted is None) or (shown and shown.status is not wanted):
                assert pending, f"{sid}: remote {shown} but wanted {wanted} and nothing pending"
            elif shown is not None:
                session = store.session(sid)
                assert session is not None
                lead = int(session.timeout * CONFIG.refresh_fraction)
                expires = shown.expires_at
                if self.model.deadline[sid] > expires and now >= expires - lead:
                    assert pending, f"{sid}: expiresAt {shown[1]} lapses while typing"

    @invariant()
    def work_is_unique_per_session(self) -> None:
        for sid in SESSIONS:
            assert not (self.store.is_queued(sid) and self.store.is_in_flight(sid))
        assert self.store.queued_work + self.store.in_flight <= self.store.tracked_sessions

    @invariant()
    def restore_of_the_changelog_equals_the_live_store(self) -> None:
        restored = PartitionStore.restore(0, CONFIG, self.clock, self.log)
        assert restored.snapshot() == self.store.snapshot()
        assert restored.floors() == self.store.floors()

    def teardown(self) -> None:
        """Let everything settle: every event ever given to the store is audited (I6)."""
        if not hasattr(self, "store"):
            return
        for _ in range(50):
            for work in self.flying:
                if work.kind is WorkKind.RESOLVE:
                    sid = work.session_id
                    result = SinkResult(Outcome.APPLIED, remote_indicator=self.remote.get(sid))
                else:
                    self._apply_remotely(work)
                    result = SinkResult(Outcome.APPLIED, http_status=200, attempts=1)
                self.store.on_result(work, result)
            self.flying = self.store.take_work(10)
            self.clock.advance(5000)
            self.store.on_tick()
            self._drain()
            if not self.flying and not self.store.queued_work:
                break
        missing = self.sent - self.audited
        assert not missing, f"events never audited: {sorted(missing)}"


StoreMachine.TestCase.settings = settings(
    settings.get_profile("state-ci" if os.environ.get("CI") else "state-dev"),
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreMachine = StoreMachine.TestCase
