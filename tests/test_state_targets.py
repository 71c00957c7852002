"""Property test of `PartitionStore` with sessions moving between the webchat session and
messaging targets (DESIGN §2b, §4), calls answered with every outcome, and crashes.

`test_state_stateful` checks the webchat rules against a model; this one adds the targets
and checks what must hold whatever the rules: versions go up by one per applied change, a
restore of the changelog equals the live store (a messaging call out counts as landed when
restored: it cannot be read back), a webchat indicator that disagrees with what is wanted
is being reconciled, and a wanted messaging indicator that is not shown is too.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from processor.clock import ManualClock
from processor.domain import Indicator, MessagingTarget, Outcome, SinkResult, Status
from processor.models import TypingEvent
from processor.state import EngineConfig, PartitionStore, Work, WorkKind

T0 = 1_700_000_000_000
CONV = "c0b5a0d4-5a3f-4a1e-8d6b-6b7a1c2d3e4f"
TARGETS: list[dict[str, Any] | None] = [
    None,
    {
        "kind": "agent_typing",
        "conversation_id": CONV,
        "communication_id": "0e9a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b",
    },
    {
        "kind": "agent_typing",
        "conversation_id": CONV,
        "communication_id": "1e9a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b",
    },
    {
        "kind": "open_messaging",
        "integration_id": "2f0c6a4e-8d8b-4c8e-9a55-0d4c5b7a1e21",
        "from_id": "customer-1",
    },
]
SESSIONS = ("a", "b")
# Exact timers keep the checks exact; rounding to buckets is unit-tested on its own.
CONFIG = EngineConfig(timer_resolution_ms=1, min_set_lifetime_ms=0)
_GONE = (Outcome.SESSION_NOT_FOUND, Outcome.SESSION_NOT_CONNECTED, Outcome.REJECTED)

_step = st.one_of(
    st.tuples(
        st.just("event"),
        st.sampled_from(["a", "a", "a", "b"]),  # mostly one session: its story goes further
        st.sampled_from(list(Status)),
        st.sampled_from(
            [0, 0, 0, -300, -1000, -7000, 800]
        ),  # occurred_at from now: late, stale, ahead
        st.sampled_from([None, None, 500, 20_000]),
        st.sampled_from([0, 0, 0, 1, 2, 3]),  # index in TARGETS: webchat half the time
        st.sampled_from([False, False, False, True]),  # a duplicate of the previous event
    ),
    st.tuples(st.just("advance"), st.sampled_from([1, 100, 700, 3000, 4500, 6000])),
    st.tuples(st.just("idle"), st.just(CONFIG.idle_evict_ms + 61_000)),
    st.tuples(st.just("take"), st.integers(1, 3)),
    st.tuples(
        st.just("result"),
        st.integers(0, 5),
        st.sampled_from([*Outcome, *[Outcome.APPLIED] * 6]),
        st.booleans(),  # a failed change reached Genesys all the same
    ),
    st.tuples(st.just("call"), st.sampled_from([Outcome.APPLIED, Outcome.APPLIED, Outcome.FAILED])),
    st.tuples(st.just("crash"), st.just(0)),
)


class _World:
    """One store, what Genesys shows, and the records the store wrote."""

    def __init__(self) -> None:
        self.clock = ManualClock(T0)
        self.store = PartitionStore(0, CONFIG, self.clock)
        self.log: list[tuple[bytes, bytes | None]] = []
        self.flying: list[Work] = []
        self.webchat: dict[str, Indicator | None] = {}
        self.messaging: dict[str, tuple[MessagingTarget, int]] = {}  # (where, shown until)
        self.versions: dict[str, int] = {}
        self.events = 0

    def drain(self) -> None:
        out = self.store.drain()
        self.log += out.changelog
        for change in out.changes:
            previous = self.versions.get(change.session_id, 0)
            assert change.version == previous + 1, (change, previous)
            self.versions[change.session_id] = change.version

    def event(self, sid: str, status: Status, delta: int, timeout: int | None, where: int,
              duplicate: bool) -> None:  # fmt: skip
        if not (duplicate and self.events):
            self.events += 1
        event = TypingEvent.model_validate(
            {
                "event_id": f"e{self.events}",
                "session_id": sid,
                "status": status.value,
                "occurred_at": max(0, self.clock.now_ms() + delta),
                "timeout_ms": timeout,
                "target": TARGETS[where],
            }
        )
        self.store.on_event(event, self.events)

    def take(self, limit: int) -> None:
        now = self.clock.now_ms()
        for work in self.store.take_work(limit):
            session = self.store.session(work.session_id)
            assert session is not None
            if work.kind is not WorkKind.RESOLVE:
                assert work.version == session.version + 1, "versions never repeat"
                if work.desired is not None and work.target is None:
                    # expiresAt never exceeds the deadline known
                    assert now < work.desired.expires_at <= session.deadline
            self.flying.append(work)

    def landed(self, work: Work) -> None:
        if work.target is None:
            self.webchat[work.session_id] = work.desired
        else:
            self.messaging[work.session_id] = (work.target, work.issued_at + work.duration_ms)

    def result(self, index: int, outcome: Outcome, reached: bool) -> None:
        if not self.flying:
            return
        work = self.flying.pop(index % len(self.flying))
        sid = work.session_id
        if outcome is Outcome.OVERTAKEN and (work.kind is WorkKind.RESOLVE or work.target):
            outcome = Outcome.FAILED  # only a webchat change finds itself overtaken
        if outcome is Outcome.OVERTAKEN:
            now = self.clock.now_ms()
            theirs = Indicator(Status.TYPING, now, now + 3000, work.version + index % 2)
            self.webchat[sid] = theirs
            self.versions[sid] = theirs.version  # recorded by the other writer
            result = SinkResult(outcome, remote_indicator=theirs)
        elif work.kind is WorkKind.RESOLVE and outcome is Outcome.APPLIED:
            result = SinkResult(outcome, remote_indicator=self.webchat.get(sid))
        else:
            reached = reached and outcome is Outcome.FAILED and work.target is None
            ambiguous = reached or index % 2 == 0
            if outcome is Outcome.APPLIED or reached:
                self.landed(work)
            elif outcome in _GONE:
                (self.webchat if work.target is None else self.messaging).pop(sid, None)
            elif ambiguous and work.target is not None:
                self.landed(work)  # a messaging call that may have landed counts as landed
            result = SinkResult(outcome, ambiguous=ambiguous, call_latencies_ms=(30.0,))
        self.store.on_result(work, result)

    def crash(self) -> None:
        for work in self.flying:
            if work.target is not None:
                self.landed(work)  # restored, a messaging call counts as landed
        self.flying = []
        self.store = PartitionStore.restore(0, CONFIG, self.clock, self.log)

    def check(self) -> None:
        restored = PartitionStore.restore(0, CONFIG, self.clock, self.log)
        messaging_out = {w.session_id for w in self.flying if w.target is not None}
        live, again = self.store.snapshot(), restored.snapshot()
        for sid in set(live) | set(again):
            if sid not in messaging_out:
                assert again.get(sid) == live.get(sid), sid
        if not messaging_out:
            assert restored.floors() == self.store.floors()
        now = self.clock.now_ms()
        store = self.store
        for sid in SESSIONS:
            session = store.session(sid)
            if session is None:
                continue
            pending = store.is_queued(sid) or store.is_in_flight(sid) or store.is_backing_off(sid)
            assert not (store.is_queued(sid) and store.is_in_flight(sid))
            wanted = store.desired(sid)
            shown = self.webchat.get(sid)
            if session.target is None:
                if (shown is None) != (wanted is None) or (shown and shown.status is not wanted):
                    assert pending, f"{sid}: webchat shows {shown}, {wanted} wanted: {session}"
                continue
            assert shown is None or pending, f"{sid}: webchat still shows {shown}: {session}"
            where = self.messaging.get(sid)
            unshown = where is None or where[0] != session.target or where[1] <= now
            if wanted is not None and unshown and session.deadline - now > 1000:
                assert pending, f"{sid}: {wanted} wanted, not shown: {session}"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_step, min_size=10, max_size=80))
@example(  # a messaging call out when its session idled out: restored, it is forgotten
    steps=[
        *[("event", "a", Status.TYPING, 0, None, 0, False)] * 6,
        ("event", "a", Status.TYPING, 0, None, 1, False),
        ("take", 1),
        ("event", "a", Status.TYPING, 0, None, 0, False),
        ("idle", CONFIG.idle_evict_ms + 61_000),
        ("crash", 0),
    ]
)
def test_targets_outcomes_and_crashes_keep_versions_changelog_and_reconciliation(
    steps: list[tuple[Any, ...]],
) -> None:
    world = _World()
    for kind, *args in steps:
        if kind == "event":
            world.event(*args)
        elif kind in ("advance", "idle"):
            world.clock.advance(args[0])
            world.store.on_tick()
        elif kind == "take":
            world.take(*args)
        elif kind == "result":
            world.result(*args)
        elif kind == "call":  # the calls ready go out and are answered at once
            world.take(3)
            while world.flying:
                world.result(0, args[0], False)
        else:
            world.drain()
            world.crash()
        world.drain()
        world.check()
