"""`MembershipLease`: calls go out only while the group has lately accepted a commit of
this member; pure, on an injected monotonic clock."""

from __future__ import annotations

import asyncio
import logging

import pytest
from pipeline import Monotonic, eventually, make_settings, now_ms

from processor.budget import ApiBudget
from processor.clock import ManualClock
from processor.domain import Indicator, Outcome, SinkResult, Status
from processor.emulator.app import SESSION_PATH
from processor.emulator.testing import EmulatorHandle
from processor.models import TypingEvent
from processor.runtime.lease import MembershipLease
from processor.runtime.scheduler import Scheduler
from processor.runtime.service import (
    LEASE_TERM_S,
    REBALANCE_TIMEOUT_MS,
    REVOKE_GRACE_S,
    SESSION_TIMEOUT_MS,
    TypingProcessor,
)
from processor.sink.client import GenesysSink
from processor.sink.config import SinkConfig
from processor.state import EngineConfig, PartitionStore, Work, WorkKind


def test_nothing_goes_out_before_the_group_first_accepted_a_commit() -> None:
    clock = Monotonic()
    lease = MembershipLease(4.0, 1.0, clock)
    assert lease.left() == 0
    assert lease.renewal_due()
    assert lease.lapses == 0  # waiting for a first proof is no lapse


def test_an_accepted_commit_allows_calls_for_the_term_from_its_request() -> None:
    clock = Monotonic()
    lease = MembershipLease(4.0, 1.0, clock)
    sent = clock.now
    clock.now += 0.3  # the commit's round trip
    assert lease.renewed(sent) is True  # calls were held until this first proof
    assert not lease.renewal_due()
    clock.now += 0.7
    assert lease.renewal_due()
    assert lease.renewed(clock.now) is False  # a renewal in time held nothing


def test_a_lapse_holds_calls_once_and_an_accepted_commit_ends_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Monotonic()
    lease = MembershipLease(4.0, 1.0, clock)
    lease.renewed(clock.now)
    clock.now += 10  # the process stood still, or no commit came through
    with caplog.at_level(logging.INFO, logger="processor.runtime.lease"):
        assert lease.left() == 0
        assert lease.left() == 0
        assert lease.lapses == 1  # one lapse, one warning
        assert lease.renewed(clock.now) is True
        assert lease.left() == pytest.approx(4.0)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "not confirmed this member for 10.0 s" in messages[0]
    assert "calls resume" in messages[1]


def test_a_failed_commit_is_retried_after_the_renewal_period_not_at_once() -> None:
    clock = Monotonic()
    lease = MembershipLease(4.0, 1.0, clock)
    lease.tried(clock.now)
    assert not lease.renewal_due()
    clock.now += 1.0
    assert lease.renewal_due()


def test_an_older_commit_answered_late_does_not_move_the_lease_back() -> None:
    clock = Monotonic()
    lease = MembershipLease(4.0, 1.0, clock)
    lease.renewed(clock.now + 2)
    lease.renewed(clock.now)
    assert lease.proven_at == clock.now + 2


def test_a_replica_left_without_partitions_starts_afresh() -> None:
    clock = Monotonic()
    lease = MembershipLease(4.0, 1.0, clock)
    lease.renewed(clock.now)
    lease.forget()
    clock.now += 60
    assert lease.left() == 0
    assert lease.lapses == 0  # idle, not lapsed


def test_a_renewal_period_not_shorter_than_the_term_is_refused() -> None:
    with pytest.raises(ValueError, match="renew_every_s"):
        MembershipLease(4.0, 4.0)


def _typing(clock: ManualClock) -> TypingEvent:
    """`typing` in webchat session s1, now."""
    return TypingEvent.model_construct(
        event_id="e1",
        session_id="s1",
        status=Status.TYPING,
        occurred_at=clock.now_ms(),
        timeout_ms=None,
        participant=None,
        channel=None,
        target=None,
    )


class _Sink:
    def __init__(self, budget: ApiBudget, etag: str | None) -> None:
        self.budget = budget
        self.etag = etag

    def cached_etag(self, session_id: str) -> str | None:
        return self.etag  # (by default every session read already: a set costs one call)


class _Reconciler:
    free_slots = 8
    free_set_slots = 8

    def __init__(self, budget: ApiBudget, etag: str | None = "etag") -> None:
        self.sink = _Sink(budget, etag)

    def on_capacity(self, callback: object) -> object:
        return lambda: None


class _Worker:
    accepting = True

    def __init__(self, store: PartitionStore) -> None:
        self.store = store
        self.launched: list[Work] = []
        self.prepaid: list[int] = []

    def launch(self, work: Work, prepaid: int) -> None:
        self.launched.append(work)
        self.prepaid.append(prepaid)


async def test_the_scheduler_holds_calls_while_the_lease_lapsed_and_sends_on_renewal() -> None:
    monotonic = Monotonic()
    lease = MembershipLease(4.0, 1.0, monotonic)
    lease.renewed(monotonic.now)
    clock = ManualClock()
    store = PartitionStore(0, EngineConfig(), clock)
    worker = _Worker(store)
    budget = ApiBudget(6000, monotonic=Monotonic())
    scheduler = Scheduler(
        _Reconciler(budget),  # type: ignore[arg-type]
        clock,
        held=lambda: lease.left() <= 0,
    )
    scheduler.attach(0, worker)
    running = asyncio.create_task(scheduler.run())
    try:
        await eventually(lambda: scheduler.rounds >= 1, 5, "the scheduler idle, waiting")
        monotonic.now += 10  # the process stood still
        event = _typing(clock)
        store.on_event(event, 0)
        scheduler.plan_now()  # as a worker does once its turn queued work
        assert worker.launched == []
        assert store.is_queued("s1")
        assert lease.lapses == 1
        rounds = scheduler.rounds
        await eventually(lambda: scheduler.rounds > rounds, 5, "another round, still held")
        assert worker.launched == []
        lease.renewed(monotonic.now)  # the group accepted a commit: the service pokes
        scheduler.poke()
        await eventually(lambda: len(worker.launched) == 1, 5, "the held set sent")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_the_processor_holds_its_sink_while_its_lease_has_lapsed(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """Every request of the processor's sink, retries included, waits for the lease: one
    that never held (nothing committed yet) sends nothing; a confirmed one lets it go."""
    settings = make_settings(bootstrap_servers, emulator)
    emulator.create_session("s1")
    clock = Monotonic()
    async with GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing)) as sink:
        processor = TypingProcessor(settings, sink, monotonic=clock)
        wanted = Indicator(Status.TYPING, now_ms(), now_ms() + 60_000, 1)
        held = await sink.apply("s1", wanted)
        assert (held.outcome, held.ambiguous) == (Outcome.FAILED, False)
        assert emulator.count("PATCH", SESSION_PATH) == 0
        processor.lease.renewed(clock.now)  # the group accepted a commit
        assert (await sink.apply("s1", wanted)).ok


def test_a_commit_confirmed_after_its_term_resumes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A commit whose answer came later than the term after its request proves the
    membership only until a moment already past: calls stay held, and the lapse is the
    same one (one warning, counted once), until a commit confirmed in time."""
    clock = Monotonic()
    lease = MembershipLease(4.0, 1.0, clock)
    lease.renewed(clock.now)
    clock.now += 10
    with caplog.at_level(logging.INFO, logger="processor.runtime.lease"):
        assert lease.left() == 0
        sent = clock.now
        clock.now += 5  # the coordinator answered late
        assert lease.renewed(sent) is False  # nothing may go
        assert lease.left() == 0
        assert lease.lapses == 1
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 1, messages
        assert lease.renewed(clock.now) is True
        assert lease.left() == pytest.approx(4.0)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "calls resume" in messages[1]


def test_a_read_back_is_priced_as_the_one_read_it_is() -> None:
    """A restored intent with no outcome is resolved by one GET, ETag or not: priced as a
    change without an ETag (two calls), it waited for a second token it never used."""
    clock = ManualClock()
    store = PartitionStore(0, EngineConfig(), clock)
    event = _typing(clock)
    store.on_event(event, 0)
    store.take_work(1)  # out, and its answer lost with its owner
    store = PartitionStore.restore(0, EngineConfig(), clock, store.drain().changelog)
    budget = ApiBudget(60, monotonic=Monotonic())
    budget.spend(budget.level() - 1.0)  # one token in hand
    scheduler = Scheduler(_Reconciler(budget, etag=None), clock)  # type: ignore[arg-type]
    worker = _Worker(store)
    scheduler.attach(0, worker)
    assert scheduler.plan_round() == (1, False)
    assert [work.kind for work in worker.launched] == [WorkKind.RESOLVE]


def test_the_webchat_clear_of_a_session_moved_to_messaging_is_priced_with_its_read() -> None:
    """A session shown typing on the webchat session moves to a messaging target: its
    next call clears the webchat indicator, and without a cached ETag that is a GET and a
    PATCH. Priced from the session's new target (one call), it went out on one token and
    its read ran the budget into debt, which no plan foresaw."""
    clock = ManualClock()
    store = PartitionStore(0, EngineConfig(), clock)
    store.on_event(_typing(clock), 0)
    (work,) = store.take_work(1)
    store.on_result(work, SinkResult(Outcome.APPLIED, http_status=200, attempts=1))
    moved = TypingEvent.model_validate(
        {
            "event_id": "e2",
            "session_id": "s1",
            "status": "typing",
            "occurred_at": clock.now_ms(),
            "target": {
                "kind": "agent_typing",
                "conversation_id": "c0b5a0d4-5a3f-4a1e-8d6b-6b7a1c2d3e4f",
                "communication_id": "0e9a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b",
            },
        }
    )
    store.on_event(moved, 1)
    worker = _Worker(store)
    # one token: the clear waits for its second; two: it goes (the set follows its result)
    for tokens, planned in ((1.0, (0, True)), (2.0, (1, False))):
        budget = ApiBudget(60, monotonic=Monotonic())
        budget.spend(budget.level() - tokens)
        scheduler = Scheduler(_Reconciler(budget, etag=None), clock)  # type: ignore[arg-type]
        scheduler.attach(0, worker)
        assert scheduler.plan_round() == planned
    (clear,) = worker.launched
    assert (clear.kind, clear.target, worker.prepaid) == (WorkKind.CLEAR, None, [2])


def test_the_group_waits_for_the_longest_revoke() -> None:
    """A revoke lets calls land (the grace), flushes and commits (at most a lease term):
    the group must wait that long for the member to rejoin, or it drops the member while
    its last calls still go out and gives its partitions to another (two owners of one
    session). aiokafka's default, the session timeout, is shorter than that."""
    assert REBALANCE_TIMEOUT_MS / 1000 >= REVOKE_GRACE_S + LEASE_TERM_S + 1.0
    assert REBALANCE_TIMEOUT_MS > SESSION_TIMEOUT_MS
