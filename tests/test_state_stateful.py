"""Stateful property tests of `PartitionStore`.

`StoreMachine` (the webchat session), against a small independent model: random events
(duplicates, out of order, stale, clock ahead), clock advances with ticks, calls taken and
answered with every sink outcome (with latencies, which set how early an expiry clear goes
out), and crash-restores from the changelog. After every step: the store's wanted state
equals the model's (the last event's), every remote indicator that disagrees with it is
being reconciled (no phantom, no lapse while typing), work is unique per session, and
restoring the changelog gives an equal store.

`MessagingMachine` (messaging targets): every call that may show an indicator has its CRM
record, every such record is followed by a `cleared` one, and no version repeats.
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
from processor.models import AgentTypingTarget, CrmStatus, OpenMessagingTarget, TypingEvent
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
        self.seen: set[tuple[str, str]] = set()  # (session, event id)

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
        if (sid, event.event_id) in self.seen:
            return
        self.seen.add((sid, event.event_id))
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
            # the previous event's id: a duplicate in its session, another event elsewhere
            event_id = f"e{self.counter - 1}"
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

_TARGETS = (
    AgentTypingTarget(
        kind="agent_typing",
        conversation_id="c0b5a0d4-5a3f-4a1e-8d6b-6b7a1c2d3e4f",
        communication_id="0e9a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b",
    ),
    OpenMessagingTarget(
        kind="open_messaging",
        integration_id="2f0c6a4e-8d8b-4c8e-9a55-0d4c5b7a1e21",
        from_id="cust-1",
    ),
)
_MESSAGING_RESULTS = (
    "applied",
    "applied_late",  # a retry went out late: shown past what the work asked for
    "ambiguous",  # a 5xx or a timeout after the request went out: may be shown
    "ambiguous_429",  # a 5xx, then a 429 on the retry
    "failed",  # nothing reached the API (circuit open, no token)
    "not_found",
)


class MessagingMachine(RuleBasedStateMachine):
    """Messaging targets (DESIGN §2b) under every sink outcome and crash-restores.

    Whatever a call's outcome, once it may show the indicator (it landed, its answer was
    lost, or its owner crashed) the CRM gets a `typing` record with its version, and every
    such record is followed by a `cleared` one when the indicator lapses (I6); no version
    is ever used by two calls that may have shown something, nor by two CRM records.
    """

    @initialize()
    def start(self) -> None:
        self.clock = ManualClock(T0)
        self.store = PartitionStore(0, CONFIG, self.clock)
        self.flying: list[Work] = []
        self.log: list[tuple[bytes, bytes | None]] = []
        self.crm: dict[str, list[tuple[int, CrmStatus]]] = {}
        self.may_show: dict[str, set[int]] = {}  # versions of calls that may have shown
        self.counter = 0

    def _drain(self) -> None:
        out = self.store.drain()
        self.log += out.changelog
        for change in out.changes:
            records = self.crm.setdefault(change.session_id, [])
            previous = records[-1][0] if records else 0
            assert change.version == previous + 1, "versions increase by one per record"
            records.append((change.version, change.status))

    def _may_have_shown(self, work: Work) -> None:
        versions = self.may_show.setdefault(work.session_id, set())
        assert work.version not in versions, "a version used again after it may have shown"
        versions.add(work.version)

    def _recorded(self, work: Work) -> None:
        """The call that may have shown has its `typing` record, with its version."""
        records = self.crm.get(work.session_id, [])
        assert work.desired is not None
        status = CrmStatus(work.desired.status.value)
        assert (work.version, status) in records, f"no record of {work.version}: {records}"

    @rule(
        sid=st.sampled_from(SESSIONS[:2]),
        status=st.sampled_from(list(Status)),
        delta=st.integers(-3000, 100),
        timeout=st.sampled_from([None, 1000, 3000, 8000, 20_000]),
        where=st.sampled_from(_TARGETS),
    )
    def event(
        self,
        sid: str,
        status: Status,
        delta: int,
        timeout: int | None,
        where: AgentTypingTarget | OpenMessagingTarget,
    ) -> None:
        self.counter += 1
        event = TypingEvent.model_construct(
            event_id=f"m{self.counter}",
            session_id=sid,
            status=status,
            occurred_at=max(0, self.clock.now_ms() + delta),
            timeout_ms=timeout,
            participant=None,
            channel=None,
            target=where,
        )
        self.store.on_event(event, self.counter)
        self._drain()

    @rule(ms=st.integers(1, 4000))
    def advance(self, ms: int) -> None:
        self.clock.advance(ms)
        self.store.on_tick()
        self._drain()

    @rule(limit=st.integers(1, 2))
    def take(self, limit: int) -> None:
        works = self.store.take_work(limit)
        assert all(w.target is not None and w.desired is not None for w in works)
        self.flying += works
        self._drain()

    @precondition(lambda self: bool(self.flying))
    @rule(index=st.integers(0, 3), kind=st.sampled_from(_MESSAGING_RESULTS))
    def result(self, index: int, kind: str) -> None:
        work = self.flying.pop(index % len(self.flying))
        now = self.clock.now_ms()
        if kind == "applied":
            result = SinkResult(Outcome.APPLIED, http_status=202, attempts=1)
        elif kind == "applied_late":
            result = SinkResult(Outcome.APPLIED, 202, 2, shown_until_ms=now + 1000)
        elif kind == "ambiguous":
            late = now + 1000 if index % 2 else None
            result = SinkResult(
                Outcome.FAILED, http_status=503, attempts=1, ambiguous=True, shown_until_ms=late
            )
        elif kind == "ambiguous_429":
            result = SinkResult(Outcome.RATE_LIMITED, http_status=429, attempts=2, ambiguous=True)
        elif kind == "failed":
            result = SinkResult(Outcome.FAILED, error="circuit open")
        else:
            result = SinkResult(Outcome.SESSION_NOT_FOUND, http_status=404, attempts=1)
        shows = kind.startswith(("applied", "ambiguous"))
        if shows:
            self._may_have_shown(work)
        self.store.on_result(work, result)
        self._drain()
        if shows:
            self._recorded(work)

    @rule()
    def crash_and_restore(self) -> None:
        lost, self.flying = self.flying, []
        for work in lost:
            self._may_have_shown(work)  # it may have landed while its owner died
        self.store = PartitionStore.restore(0, CONFIG, self.clock, self.log)
        self._drain()
        for work in lost:
            self._recorded(work)

    @invariant()
    def restore_of_the_changelog_equals_the_live_store(self) -> None:
        if self.flying:
            return  # a restore counts the calls out as landed; the live store waits
        restored = PartitionStore.restore(0, CONFIG, self.clock, self.log)
        assert restored.snapshot() == self.store.snapshot()

    def teardown(self) -> None:
        """Every call answered, then typing left to lapse: each session's last record is
        `cleared`, so every `typing` record was followed by one."""
        if not hasattr(self, "store"):
            return
        for _ in range(50):
            for work in self.flying:
                self._may_have_shown(work)
                self.store.on_result(work, SinkResult(Outcome.APPLIED, 202, 1))
            self.flying = self.store.take_work(10)
            self.clock.advance(5000)
            self.store.on_tick()
            self._drain()
            if not self.flying and not self.store.queued_work and not self.store.tracked_sessions:
                break
        for sid, records in self.crm.items():
            assert records[-1][1] is CrmStatus.CLEARED, f"{sid}: {records}"


MessagingMachine.TestCase.settings = settings(
    settings.get_profile("state-ci" if os.environ.get("CI") else "state-dev"),
    suppress_health_check=[HealthCheck.too_slow],
)
TestMessagingMachine = MessagingMachine.TestCase
