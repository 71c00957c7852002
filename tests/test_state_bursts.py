"""How long typing lasts, learned from the stream (`state.bursts`), and how the store and
the planner use it: a set for a participant who types long is worth more."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from processor.clock import ManualClock
from processor.domain import Role, Status
from processor.models import Participant, TypingEvent
from processor.planner import Capacity, Planner, PlannerConfig
from processor.state import EngineConfig, PartitionStore, WorkKind
from processor.state.bursts import MIN_BURSTS, WEIGHT_RANGE, BurstLengths
from processor.state.session import Session

T0 = 1_700_000_000_000


def test_weight_is_one_until_enough_bursts_are_known() -> None:
    lengths = BurstLengths()
    for _ in range(MIN_BURSTS - 1):
        lengths.record(Role.AGENT, 9000, 0)
    assert lengths.mean() is None
    assert lengths.weight(Role.AGENT, 9000) == 1.0
    lengths.record(Role.CUSTOMER, 1000, 0)
    assert lengths.mean() is not None
    assert lengths.weight(Role.AGENT, 0) == 1.0  # the agents' own mean is not known yet


def test_roles_and_sessions_that_type_longer_weigh_more() -> None:
    lengths = BurstLengths()
    for _ in range(MIN_BURSTS):
        lengths.record(Role.AGENT, 8000, 0)
        lengths.record(Role.CUSTOMER, 2000, 0)
    assert lengths.mean() == 5000
    assert lengths.weight(Role.AGENT, 0) == 8000 / 5000
    assert lengths.weight(Role.CUSTOMER, 0) == 2000 / 5000
    assert lengths.weight(None, 0) == 1.0
    # a session's own typical length wins over its role's mean
    assert lengths.weight(Role.CUSTOMER, 10_000) == 2.0


def test_a_sessions_typical_length_moves_a_third_of_the_way_to_each_burst() -> None:
    lengths = BurstLengths()
    for _ in range(MIN_BURSTS):
        lengths.record(Role.CUSTOMER, 2000, 0)
    typical = lengths.record(Role.CUSTOMER, 10_000, 0)  # from the role's mean
    assert 4000 < typical < 6000
    assert lengths.record(Role.CUSTOMER, 10_000, typical) == (2 * typical + 10_000) // 3
    assert BurstLengths().record(Role.BOT, 3000, 0) == 3000  # nothing known: its own


@given(
    bursts=st.lists(st.tuples(st.sampled_from(list(Role)), st.integers(0, 120_000)), max_size=200),
    typical=st.integers(0, 200_000),
    role=st.sampled_from([None, *Role]),
)
def test_weights_stay_in_range_and_means_between_the_lengths_seen(
    bursts: list[tuple[Role, int]], typical: int, role: Role | None
) -> None:
    lengths = BurstLengths()
    own = 0
    longest = max((length for _, length in bursts), default=0)
    for burst_role, length in bursts:
        own = lengths.record(burst_role, length, own)
        assert 1 <= own <= max(1, longest)
    low, high = WEIGHT_RANGE
    assert low <= lengths.weight(role, typical) <= high
    mean = lengths.mean()
    if mean is not None:
        seen = [length for _, length in bursts]
        assert min(seen) - 1e-6 <= mean <= max(seen) + 1e-6


def _typing(sid: str, role: Role, at: int, n: int, status: Status = Status.TYPING) -> TypingEvent:
    return TypingEvent(
        event_id=f"{sid}-{n}",
        session_id=sid,
        status=status,
        occurred_at=at,
        participant=Participant(id=f"{sid}-p", role=role),
    )


def _bursts(store: PartitionStore, clock: ManualClock, role: Role, length: int, n: int) -> None:
    """`n` sessions of `role` each type for `length` ms (a keystroke every 500) and stop."""
    start = clock.now_ms()
    for i in range(n):
        sid = f"{role.value}-{i}"
        for k, at in enumerate(range(start, start + length, 500)):
            clock.set(max(clock.now_ms(), at))
            store.on_event(_typing(sid, role, at, k), k)
        clock.set(max(clock.now_ms(), start + length))
        store.on_event(_typing(sid, role, start + length, 10_000, Status.STOPPED), 10_000)
    store.drain()


def _taught_store() -> tuple[PartitionStore, int]:
    """A store that has seen agents type 8 s and customers 1 s; and the time 10 s later."""
    clock = ManualClock(T0)
    store = PartitionStore(0, EngineConfig(), clock)
    _bursts(store, clock, Role.AGENT, 8000, MIN_BURSTS)
    _bursts(store, clock, Role.CUSTOMER, 1000, MIN_BURSTS)
    return store, clock.advance(10_000)


def test_the_store_learns_bursts_from_events_and_weighs_sessions_by_them() -> None:
    store, now = _taught_store()
    store.on_event(_typing("agent-new", Role.AGENT, now, 1), 1)
    store.on_event(_typing("customer-new", Role.CUSTOMER, now, 2), 2)
    store.on_event(_typing("agent-0", Role.AGENT, now, 3), 3)  # an agent seen before
    weights = {sid: store.typing_weight(_session(store, sid)) for sid in
               ("agent-new", "customer-new", "agent-0")}  # fmt: skip
    assert weights["customer-new"] < 1 < weights["agent-new"]
    assert weights["agent-0"] > 1


def test_a_lapsed_burst_counts_until_its_deadline() -> None:
    clock = ManualClock(T0)
    store = PartitionStore(0, EngineConfig(), clock)
    for i in range(MIN_BURSTS):
        sid = f"s{i}"
        store.on_event(_typing(sid, Role.CUSTOMER, clock.now_ms(), 0), 0)
        clock.advance(6000)  # past the 5 s typing timeout: it lapses
        store.on_tick()
    assert store.bursts.bursts == MIN_BURSTS
    assert store.bursts.mean(Role.CUSTOMER) == 5000


def test_a_pause_ends_a_burst_and_only_typing_is_learned() -> None:
    clock = ManualClock(T0)
    store = PartitionStore(0, EngineConfig(), clock)
    for i in range(MIN_BURSTS):
        sid = f"s{i}"
        store.on_event(_typing(sid, Role.AGENT, clock.now_ms(), 0), 0)
        clock.advance(3000)
        store.on_event(_typing(sid, Role.AGENT, clock.now_ms(), 1, Status.PAUSED), 1)
        clock.advance(1000)
        store.on_event(_typing(sid, Role.AGENT, clock.now_ms(), 2, Status.STOPPED), 2)
    assert store.bursts.bursts == MIN_BURSTS  # the paused stretches are not bursts
    assert store.bursts.mean(Role.AGENT) == 3000


def _session(store: PartitionStore, sid: str) -> Session:
    session = store.session(sid)
    assert session is not None
    return session


def test_the_planner_spends_a_scarce_set_on_the_longer_typist() -> None:
    store, now = _taught_store()
    # the agent's set is as fresh as the customer's, and queued before it (among equals
    # the newest goes first)
    store.on_event(_typing("a-late", Role.AGENT, now, 1), 1)
    store.on_event(_typing("c-late", Role.CUSTOMER, now, 2), 2)
    picks = Planner().plan(
        [store], Capacity(tokens=1.0, rate_per_ms=0.005, slots=4, set_slots=4), now,
        lambda s: 1,
    )  # fmt: skip
    assert [(p.session_id, p.kind) for p in picks] == [("a-late", WorkKind.SET)]


def test_the_weight_counts_by_its_square_root() -> None:
    """The weight is a ratio of typing lengths, but a set also shows the tail after the
    typing, which does not grow with it: an agent who usually types about five times as
    long as a customer, silent for 3.5 s (1.5 s of its indicator left), is not worth more
    than a customer whose burst has just begun. (Ages weigh nothing here.)"""
    store, now = _taught_store()
    store.on_event(_typing("a-quiet", Role.AGENT, now - 3500, 1), 1)
    store.on_event(_typing("c-new", Role.CUSTOMER, now, 2), 2)
    weights = [store.typing_weight(_session(store, sid)) for sid in ("a-quiet", "c-new")]
    assert weights[0] / weights[1] > 4  # about the ratio of their lengths
    picks = Planner(PlannerConfig(age_weight=0.0)).plan(
        [store], Capacity(tokens=1.0, rate_per_ms=0.005, slots=4, set_slots=4), now,
        lambda s: 1,
    )  # fmt: skip
    assert [(p.session_id, p.kind) for p in picks] == [("c-new", WorkKind.SET)]
