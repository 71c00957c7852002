"""A restored store holds new sets and refreshes while the input since the last commit is
replayed (`PartitionStore.hold_for_replay`): what the changelog wants may be over already
(a `stopped` processed before the crash, not committed), and a set sent before the replay
would show it again. Clears and read-backs never wait (I1), and a refresh waits no longer
than its indicator allows (I2)."""

from __future__ import annotations

import itertools
from typing import Any

from processor.clock import ManualClock
from processor.domain import ChangeReason, Decision, Outcome, SinkResult, Status
from processor.models import CrmStatus, TypingEvent
from processor.state import EngineConfig, PartitionStore, WorkKind

T0 = 1_700_000_000_000
CONV = "c0b5a0d4-5a3f-4a1e-8d6b-6b7a1c2d3e4f"
COMM = "0e9a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
AGENT = {"kind": "agent_typing", "conversation_id": CONV, "communication_id": COMM}
APPLIED = SinkResult(Outcome.APPLIED, http_status=200, attempts=1)
CONFIG = EngineConfig(messaging_max_duration_ms=5000)
_ids = itertools.count()


def ev(
    sid: str, status: Status, at: int, timeout: int | None = None, target: Any = None
) -> TypingEvent:
    return TypingEvent.model_validate(
        {
            "event_id": f"e{next(_ids)}",
            "session_id": sid,
            "status": status.value,
            "occurred_at": at,
            "timeout_ms": timeout,
            "target": target,
        }
    )


def shown(clock: ManualClock, *events: TypingEvent) -> PartitionStore:
    """A live store that processed `events` (offsets 0, 1, ...) and whose calls all landed."""
    store = PartitionStore(0, CONFIG, clock)
    for offset, event in enumerate(events):
        store.on_event(event, offset)
    for work in store.take_work(10):
        store.on_result(work, APPLIED)
    return store


def restored(store: PartitionStore, clock: ManualClock) -> PartitionStore:
    return PartitionStore.restore(0, CONFIG, clock, store.drain().changelog)


def test_a_set_the_changelog_still_wants_waits_for_the_replay_that_stops_it() -> None:
    """A messaging indicator that lapsed while the partition had no owner, typing still
    wanted by the changelog, and a `stopped` in the input not committed: no set goes out,
    while the clear a webchat indicator owes goes out at once."""
    clock = ManualClock(T0)
    live = shown(
        clock,
        ev("agent", Status.TYPING, T0, 60_000, AGENT),
        ev("web", Status.TYPING, T0, 8_000),
    )
    clock.advance(12_000)  # the downtime: "shown until" and the webchat deadline pass
    store = restored(live, clock)
    store.hold_for_replay(5, clock.now_ms() + 2_000)
    store.on_tick()
    [clear] = store.take_work(10)
    assert (clear.session_id, clear.kind) == ("web", WorkKind.CLEAR)
    assert store.replaying
    store.on_event(ev("agent", Status.STOPPED, T0 + 1_000), 4)  # the replay
    store.replayed(5)
    assert not store.replaying
    store.on_tick()
    assert store.take_work(10) == []
    assert store.desired("agent") is None


def test_without_a_hold_that_set_goes_out_before_the_replay() -> None:
    """What the hold prevents: the restored store queues the set at once."""
    clock = ManualClock(T0)
    live = shown(clock, ev("agent", Status.TYPING, T0, 60_000, AGENT))
    clock.advance(12_000)
    store = restored(live, clock)
    store.on_tick()
    [work] = store.take_work(10)
    assert (work.session_id, work.kind) == ("agent", WorkKind.SET)


def test_the_replay_reaching_its_end_releases_what_is_still_wanted() -> None:
    clock = ManualClock(T0)
    live = shown(clock, ev("agent", Status.TYPING, T0, 60_000, AGENT))
    clock.advance(12_000)
    store = restored(live, clock)
    store.hold_for_replay(5, clock.now_ms() + 2_000)
    store.on_tick()
    assert store.take_work(10) == []
    assert store.take("agent") is None  # taken by name, it waits all the same
    store.replayed(4)  # not yet at the end
    assert store.take_work(10) == []
    store.replayed(5)
    [work] = store.take_work(10)
    assert (work.session_id, work.kind) == ("agent", WorkKind.SET)


def test_the_hold_ends_at_its_bound_when_the_replay_does_not_come() -> None:
    """A slow or empty fetch holds typing no longer than the bound (an end not known: the
    bound alone); the worker wakes for it."""
    clock = ManualClock(T0)
    live = shown(clock, ev("agent", Status.TYPING, T0, 60_000, AGENT))
    clock.advance(12_000)
    store = restored(live, clock)
    until = clock.now_ms() + 2_000
    store.hold_for_replay(None, until)
    store.on_tick()
    assert store.take_work(10) == []
    wakeup = store.next_wakeup_ms()
    assert wakeup is not None
    assert wakeup <= until
    clock.set(until - 1)
    store.on_tick()
    assert store.take_work(10) == []
    clock.set(until)
    store.on_tick()
    assert not store.replaying
    [work] = store.take_work(10)
    assert (work.session_id, work.kind) == ("agent", WorkKind.SET)


def test_a_new_event_during_the_hold_waits_too() -> None:
    clock = ManualClock(T0)
    store = restored(PartitionStore(0, CONFIG, clock), clock)
    store.hold_for_replay(3, T0 + 2_000)
    store.on_event(ev("fresh", Status.TYPING, T0, 10_000), 1)
    assert store.take_work(10) == []
    store.on_event(ev("fresh", Status.STOPPED, T0 + 5), 2)
    store.replayed(3)
    assert store.take_work(10) == []


def test_a_refresh_due_during_the_hold_waits_no_longer_than_its_indicator_allows() -> None:
    """I2: a webchat indicator shown before the crash, typing going on past its `expiresAt`:
    its refresh waits for the replay, but goes out half its lead before that `expiresAt`
    at the latest, and carries the deadline."""
    clock = ManualClock(T0)
    live = shown(clock, ev("web", Status.TYPING, T0, 5_000))
    session = live.session("web")
    assert session is not None
    expires = session.remote_expires
    assert expires == T0 + 5_000
    clock.set(T0 + 4_000)
    live.on_event(ev("web", Status.TYPING, T0 + 4_000, 5_000), 1)  # typing goes on
    store = restored(live, clock)
    lead = store.refresh_lead_ms(session)
    store.hold_for_replay(9, clock.now_ms() + 2_000)  # ends after `expires`
    clock.set(expires - lead)
    store.on_tick()
    assert store.take_work(10) == []  # due, and held
    release = expires - lead // 2
    wakeup = store.next_wakeup_ms()
    assert wakeup is not None
    assert wakeup <= release
    clock.set(release)
    store.on_tick()
    assert store.replaying
    [refresh] = store.take_work(10)
    assert (refresh.session_id, refresh.kind) == ("web", WorkKind.REFRESH)
    assert refresh.desired is not None
    assert refresh.desired.expires_at == T0 + 9_000
    assert clock.now_ms() < expires


def test_a_hold_whose_bound_has_passed_holds_nothing() -> None:
    clock = ManualClock(T0)
    live = shown(clock, ev("agent", Status.TYPING, T0, 60_000, AGENT))
    clock.advance(12_000)
    store = restored(live, clock)
    store.hold_for_replay(5, clock.now_ms())
    assert not store.replaying
    store.on_tick()
    [work] = store.take_work(10)
    assert work.kind is WorkKind.SET


def test_a_lapse_lost_with_its_owner_is_recorded_again_as_it_was() -> None:
    """A messaging indicator lapsed after a `stopped`: the CRM heard `cleared` (reason
    `stopped`) before the changelog did, and the owner died. The next owner restores the
    state from before the stop, and its replay brings the stop again: the lapse it records
    must be that same change (id, version, reason), not one `expired` under the same id."""
    clock = ManualClock(T0)
    live = shown(clock, ev("agent", Status.TYPING, T0, 4_000, AGENT))
    changelog = live.drain().changelog  # acknowledged: typing shown until T0 + 4 s
    stop = ev("agent", Status.STOPPED, T0 + 1_000, target=AGENT)
    clock.advance(1_000)
    live.on_event(stop, 1)
    clock.advance(3_000)
    live.on_tick()
    [lapse] = live.drain().changes  # on the CRM topic; the owner dies before its flush
    assert (lapse.status, lapse.reason) == (CrmStatus.CLEARED, ChangeReason.STOPPED)
    clock.advance(6_000)  # the downtime
    store = PartitionStore.restore(0, CONFIG, clock, changelog)
    store.hold_for_replay(2, clock.now_ms() + 2_000)
    clock.advance(50)  # the replay's records come a moment after the restore
    store.on_tick()
    store.on_event(stop, 1)
    store.replayed(2)
    store.on_tick()
    assert store.drain().changes == [lapse]


def test_a_lapse_before_a_stop_is_recorded_again_as_expired() -> None:
    """The other order: the indicator lapsed (`expired`) and a `stopped` came after it,
    both lost with their owner. The replay brings the stop before the lapse is decided
    again: the lapse still says `expired`, for the stop came after it ran out."""
    clock = ManualClock(T0)
    live = shown(clock, ev("agent", Status.TYPING, T0, 4_000, AGENT))
    changelog = live.drain().changelog
    clock.advance(4_000)
    live.on_tick()
    [lapse] = live.drain().changes
    assert (lapse.status, lapse.reason) == (CrmStatus.CLEARED, ChangeReason.EXPIRED)
    stop = ev("agent", Status.STOPPED, T0 + 5_000, target=AGENT)
    clock.advance(1_000)
    live.on_event(stop, 1)
    assert live.drain().changes == []
    clock.advance(5_000)
    store = PartitionStore.restore(0, CONFIG, clock, changelog)
    store.hold_for_replay(2, clock.now_ms() + 2_000)
    clock.advance(50)
    store.on_tick()
    store.on_event(stop, 1)
    store.replayed(2)
    store.on_tick()
    assert store.drain().changes == [lapse]


def test_a_lapse_after_a_stop_lost_with_a_call_in_flight_is_recorded_again_as_it_was() -> None:
    """As above, with the changelog at the call's intent: the owner died once the call had
    landed, the stop come and the lapse gone to the CRM (`stopped`). The intent restored
    counts as landed, and its lapse, past by then, waits for the replay like any other;
    it used to be decided during the restore, before the replay, as `expired` under the
    same id, and the replayed stop then was `suppressed`, not `lapsed`."""
    clock = ManualClock(T0)
    live = PartitionStore(0, CONFIG, clock)
    live.on_event(ev("agent", Status.TYPING, T0, 4_000, AGENT), 0)
    [work] = live.take_work(10)
    changelog = live.drain().changelog  # acknowledged: the intent, before the call
    live.on_result(work, APPLIED)
    stop = ev("agent", Status.STOPPED, T0 + 1_000, target=AGENT)
    clock.advance(1_000)
    live.on_event(stop, 1)
    clock.advance(3_000)
    live.on_tick()
    lost = live.drain()  # on the CRM topic and the audit; the owner dies before its flush
    typing, lapse = lost.changes
    assert (lapse.status, lapse.reason) == (CrmStatus.CLEARED, ChangeReason.STOPPED)
    clock.advance(12_000)  # the downtime: the group noticed the owner gone
    store = PartitionStore.restore(0, CONFIG, clock, changelog)
    store.hold_for_replay(2, clock.now_ms() + 2_000)
    clock.advance(50)
    store.on_tick()
    store.on_event(stop, 1)
    store.replayed(2)
    store.on_tick()
    out = store.drain()
    restored_typing, restored_lapse = out.changes
    assert (restored_typing.event_id, restored_typing.version) == (typing.event_id, 1)
    assert restored_lapse == lapse
    assert [(a.event_id, a.result) for a in out.audits][-1] == (stop.event_id, Decision.LAPSED)
    assert store.take_work(10) == []
