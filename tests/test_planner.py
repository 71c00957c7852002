"""The planner under a simulated budget and an injected clock (DESIGN §4b).

Stores driven by generated typing traffic, a fake Genesys that applies every call after a
latency, and the planner choosing each round what to send with the budget there is.
Properties: never more calls than the budget; a clear is never starved by sets; no set is
made whose clear (and every shown indicator's) could not be paid in time; and, with the
budget honoured, every indicator is cleared within the I1 slack of its deadline.
"""

from __future__ import annotations

import heapq
import zlib
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.budget import ApiBudget
from processor.clock import ManualClock
from processor.domain import Outcome, SinkResult, Status
from processor.models import TypingEvent
from processor.planner import Capacity, Pick, Planner, PlannerConfig
from processor.state import EngineConfig, PartitionStore, Work, WorkKind
from processor.state.session import Session

T0 = 1_700_000_000_000
STEP_MS = 20
LATENCY_MS = 40
SLACK_MS = 1000
CONFIG = EngineConfig(timer_resolution_ms=10)


@dataclass(order=True)
class _Due:
    at: int
    seq: int
    work: Work = field(compare=False)
    store: PartitionStore = field(compare=False)


class Simulation:
    """Stores, a budget, the planner and a fake Genesys on one manual clock."""

    def __init__(
        self, partitions: int, rate_per_minute: int, config: PlannerConfig | None = None
    ) -> None:
        self.clock = ManualClock(T0)
        self.monotonic = 0.0
        self.budget = ApiBudget(rate_per_minute, monotonic=lambda: self.monotonic)
        self.stores = [PartitionStore(p, CONFIG, self.clock) for p in range(partitions)]
        self.planner = Planner(config or PlannerConfig(clear_slack_ms=SLACK_MS))
        self.flying: list[_Due] = []
        self.seq = 0
        self.remote: dict[str, bool] = {}  # shown in Genesys
        self.etags: set[str] = set()
        self.calls = 0

    def cost(self, session: Session) -> int:
        return 1 if session.sid in self.etags else 2

    def store_of(self, sid: str) -> PartitionStore:
        return self.stores[hash(sid) % len(self.stores)]

    def event(self, sid: str, status: Status, offset: int, timeout_ms: int | None = None) -> None:
        event = TypingEvent.model_construct(
            event_id=f"{sid}-{offset}",
            session_id=sid,
            status=status,
            occurred_at=self.clock.now_ms(),
            timeout_ms=timeout_ms,
            participant=None,
            channel=None,
            target=None,
        )
        self.store_of(sid).on_event(event, offset)

    def advance(self, ms: int) -> None:
        self.clock.advance(ms)
        self.monotonic += ms / 1000
        now = self.clock.now_ms()
        while self.flying and self.flying[0].at <= now:
            due = heapq.heappop(self.flying)
            work = due.work
            if work.kind is not WorkKind.RESOLVE:
                self.remote[work.session_id] = work.desired is not None
            due.store.on_result(work, SinkResult(Outcome.APPLIED, http_status=200, attempts=1))
        for store in self.stores:
            store.on_tick()
            store.drain()

    def round(self) -> list[Pick]:
        now = self.clock.now_ms()
        capacity = Capacity.of(self.budget, now, slots=32, set_slots=24)
        queued_clears = sum(1 for store in self.stores for _ in store.queued_clears())
        picks = self.planner.plan(self.stores, capacity, now, self.cost)
        kinds = [pick.kind for pick in picks]
        first_set = next((i for i, k in enumerate(kinds) if k is WorkKind.SET), len(kinds))
        clears_picked = sum(1 for k in kinds if k in (WorkKind.CLEAR, WorkKind.RESOLVE))
        # a clear is never starved by sets: no set while a clear waits unpicked
        if first_set < len(kinds):
            assert clears_picked == queued_clears, "a set went out before a waiting clear"
            assert all(k is not WorkKind.CLEAR for k in kinds[first_set:])
        spent = sum(pick.cost for pick in picks)
        assert spent <= max(0.0, capacity.tokens) + 1e-9, "more calls than the budget holds"
        for pick in picks:
            work = pick.store.take(pick.session_id)
            if work is None:
                # as in the scheduler: a set about to lapse is dropped when taken, no call
                assert pick.kind is WorkKind.SET
                continue
            self.budget.spend(pick.cost)
            self.calls += pick.cost
            self.etags.add(work.session_id)
            self.seq += 1
            heapq.heappush(self.flying, _Due(now + LATENCY_MS, self.seq, work, pick.store))
        if any(k is WorkKind.SET for k in kinds):
            self.check_clears_payable(now)
        return picks

    def check_clears_payable(self, now: int) -> None:
        """Every shown (or being shown) indicator's clear can be paid by its due time."""
        clearing = {d.work.session_id for d in self.flying if d.work.kind is WorkKind.CLEAR}
        dues = []
        for store in self.stores:
            for s in store.shown_webchat():
                if s.sid in clearing:
                    continue  # paid already
                wanted = s.status is not None and s.deadline > now
                dues.append((s.deadline if wanted else now) + SLACK_MS)
        dues.sort()
        level = self.budget.level()
        rate = self.budget.rate_per_s / 1000
        for k, due in enumerate(dues, start=1):
            assert k <= level + rate * (due - now) + 1e-6, (
                f"clear {k} of {len(dues)} due in {due - now} ms cannot be paid"
            )


@st.composite
def traffic(draw: st.DrawFn) -> list[tuple[int, str, Status]]:
    """Typing bursts of a few sessions: (time ms, session, status), time-ordered."""
    sessions = draw(st.integers(2, 30))
    out: list[tuple[int, str, Status]] = []
    for n in range(sessions):
        t = draw(st.integers(0, 3000))
        for _ in range(draw(st.integers(1, 3))):
            length = draw(st.integers(300, 6000))
            end = t + length
            while t < end:
                out.append((t, f"s{n}", Status.TYPING))
                t += draw(st.integers(200, 900))
            if draw(st.booleans()):
                out.append((t, f"s{n}", Status.STOPPED))
            t += draw(st.integers(500, 4000))
    return sorted(out, key=lambda item: item[0])


@settings(max_examples=60, deadline=None)
@given(
    events=traffic(),
    rate=st.sampled_from([30, 60, 300, 1200]),
    partitions=st.integers(1, 4),
)
def test_budget_is_honoured_clears_first_and_never_starved(
    events: list[tuple[int, str, Status]], rate: int, partitions: int
) -> None:
    sim = Simulation(partitions, rate)
    offsets = 0
    elapsed = 0
    index = 0
    horizon = (events[-1][0] if events else 0) + 20_000
    while elapsed <= horizon:
        while index < len(events) and events[index][0] <= elapsed:
            _, sid, status = events[index]
            offsets += 1
            sim.event(sid, status, offsets)
            index += 1
        sim.round()
        sim.advance(STEP_MS)
        elapsed += STEP_MS
    # never more calls than the budget: its burst plus its rate over the run
    assert sim.calls <= sim.budget.capacity + rate / 60_000 * horizon + 2
    # everything settles: nothing left shown, nothing left queued
    assert not any(sim.remote.values())
    assert all(store.queued_work == 0 and store.in_flight == 0 for store in sim.stores)


def test_ranks_sets_by_value_and_keeps_budget_for_clears() -> None:
    sim = Simulation(1, 60)  # one call a second, two held
    store = sim.stores[0]
    sim.etags.update({"fresh", "old", "shown"})
    # "shown" is set and stays typing; "old" has typed for a long while; "fresh" just began
    sim.event("shown", Status.TYPING, 1)
    sim.round()
    sim.advance(LATENCY_MS)
    sim.event("old", Status.TYPING, 2)
    for step in range(8):
        sim.advance(500)
        sim.event("old", Status.TYPING, 10 + step)
        sim.event("shown", Status.TYPING, 30 + step)
    sim.event("fresh", Status.TYPING, 50)
    queued = {s.sid for s in store.queued_sets()}
    assert queued == {"old", "fresh"}
    reserve = min(PlannerConfig().stop_reserve, 1)  # kept for one shown indicator's stop
    picks = sim.planner.plan(
        sim.stores, Capacity(tokens=2.0 + reserve, rate_per_ms=1 / 1000, slots=8, set_slots=8),
        sim.clock.now_ms(), sim.cost,
    )  # fmt: skip
    sets = [p.session_id for p in picks if p.kind is WorkKind.SET]
    assert sets[:1] == ["fresh"]  # a young burst is worth more than an old one
    # with one token (and the reserve), a set would leave the shown indicator's clear
    # unpaid in time
    starved = sim.planner.plan(
        sim.stores, Capacity(tokens=1.0 + reserve, rate_per_ms=0.0, slots=8, set_slots=8),
        sim.clock.now_ms(), sim.cost,
    )  # fmt: skip
    assert [p for p in starved if p.kind is WorkKind.SET] == []


def _shown_and_a_set_waiting(
    config: PlannerConfig, shown: tuple[str, ...] = ("a", "b"), rate_per_minute: int = 60
) -> Simulation:
    """The `shown` indicators up, a set for "next" waiting (every ETag cached)."""
    sim = Simulation(1, rate_per_minute, config)
    sim.etags.update({*shown, "next"})
    for offset, sid in enumerate(shown, start=1):
        sim.event(sid, Status.TYPING, offset)
    sim.round()
    sim.advance(LATENCY_MS)
    sim.event("next", Status.TYPING, len(shown) + 1)
    assert sim.stores[0].shown_webchat_count == len(shown)
    return sim


def test_sets_leave_the_stop_reserve_in_hand() -> None:
    """A stop makes a shown indicator's clear due at once: sets keep tokens for such
    clears, as many as the reserve and at most one per shown indicator."""
    for reserve in (0, 1, 2, 3):
        sim = _shown_and_a_set_waiting(PlannerConfig(stop_reserve=reserve))
        # nothing accrues: the set (1), its clear (1) and the shown ones' clears (2) are
        # paid from the tokens in hand, and the reserve stays on top of them
        needed = 4.0 + min(reserve, 2)
        for tokens, made in ((needed - 0.5, False), (needed, True)):
            picks = sim.planner.plan(
                sim.stores, Capacity(tokens=tokens, rate_per_ms=0.0, slots=8, set_slots=8),
                sim.clock.now_ms(), sim.cost,
            )  # fmt: skip
            assert [p.session_id for p in picks if p.kind is WorkKind.SET] == (
                ["next"] if made else []
            ), (reserve, tokens)


def test_sets_leave_a_token_in_hand_for_a_stop_while_indicators_are_shown() -> None:
    """A stop's clear should not wait for the next token: while an indicator is shown,
    the best set waits until it can leave one in hand (the bucket fills all the same),
    and a worse, cheaper set does not take its place."""
    sim = Simulation(1, 60, PlannerConfig(stop_reserve=0))
    sim.etags.update({"shown", "cheap"})
    sim.event("shown", Status.TYPING, 1)
    sim.round()
    sim.advance(LATENCY_MS)
    sim.advance(2_000)
    sim.event("cheap", Status.TYPING, 2)  # a cached ETag, but two seconds older
    sim.advance(2_000)
    sim.event("best", Status.TYPING, 3)  # no ETag yet: a GET and a PATCH
    now = sim.clock.now_ms()

    def sets(tokens: float, burst: float = 10.0, hold: float = 1.0) -> list[str]:
        planner = Planner(PlannerConfig(stop_reserve=0, stop_hold=hold))
        capacity = Capacity(tokens=tokens, rate_per_ms=1.0, slots=8, set_slots=8, burst=burst)
        picks = planner.plan(sim.stores, capacity, now, sim.cost)
        return [p.session_id for p in picks if p.kind is WorkKind.SET]

    assert sets(2.0, hold=0.0)[:1] == ["best"]
    assert sets(2.0) == []  # "best" waits for a third token; "cheap" does not take it
    assert sets(3.0)[:1] == ["best"]
    assert sets(2.0, burst=2.0)[:1] == ["best"]  # a bucket of two cannot hold one more


def test_a_set_takes_the_last_token_when_the_bucket_could_never_hold_one_more() -> None:
    """The token left in hand for a stop is kept only if the bucket can hold it beside
    the set's: with a bucket of 1.5, a set of one call takes the 1.5 tokens there are."""
    sim = Simulation(1, 60, PlannerConfig(stop_reserve=0))
    sim.etags.update({"shown", "next"})
    sim.event("shown", Status.TYPING, 1)
    sim.round()
    sim.advance(LATENCY_MS)
    sim.event("next", Status.TYPING, 2)
    now = sim.clock.now_ms()
    planner = Planner(PlannerConfig(stop_reserve=0, stop_hold=1.0))

    def sets(burst: float) -> list[str]:
        capacity = Capacity(tokens=1.5, rate_per_ms=1.0, slots=8, set_slots=8, burst=burst)
        return [p.session_id for p in planner.plan(sim.stores, capacity, now, sim.cost)]

    assert sets(burst=1.5) == ["next"]
    assert sets(burst=10.0) == []  # a bucket that will hold the stop's token: it waits


def test_sets_leave_room_for_the_requests_conflicts_bring() -> None:
    """Each call brings `overhead` unplanned requests on average (a 412's re-read and
    retry, spent into debt by the sink): the clear-debt check weighs every call by that,
    so that clears are still paid in time when conflicts are frequent."""
    for overhead in (0.0, 0.25, 0.5, 1.0):
        sim = _shown_and_a_set_waiting(PlannerConfig(stop_reserve=0))
        # nothing accrues: the set, its clear and the two shown ones' clears, each with
        # its expected share of unplanned requests, are paid from the tokens in hand
        needed = 4.0 * (1 + overhead)
        for tokens, made in ((needed - 0.25, False), (needed, True)):
            capacity = Capacity(
                tokens=tokens, rate_per_ms=0.0, slots=8, set_slots=8, overhead=overhead
            )
            picks = sim.planner.plan(sim.stores, capacity, sim.clock.now_ms(), sim.cost)
            assert [p.session_id for p in picks if p.kind is WorkKind.SET] == (
                ["next"] if made else []
            ), (overhead, tokens)


def test_sets_wait_for_what_the_rolling_window_lets_out_before_their_clears() -> None:
    """The bucket may have tokens while the minute's allowance is spent: a set is made only
    when the window lets out, by each due time, the clears that will then be owed, and a
    second of the rate more (`window_margin_s`): once the window is full, an unforeseen
    clear waits for its next release, not for the next token."""
    sim = _shown_and_a_set_waiting(PlannerConfig(stop_reserve=0), shown=("shown",))
    now = sim.clock.now_ms()

    def sets(room: float, releases: list[tuple[int, float]], margin_s: float = 0.0) -> list[str]:
        planner = Planner(PlannerConfig(stop_reserve=0, window_margin_s=margin_s))
        capacity = Capacity(
            tokens=min(3.0, room), rate_per_ms=1.0, slots=8, set_slots=8,
            window_room=room, window_releases=lambda: releases,
        )  # fmt: skip
        picks = planner.plan(sim.stores, capacity, now, sim.cost)
        return [p.session_id for p in picks if p.kind is WorkKind.SET]

    # the set (1) and two clears (the shown one's and its own, due in about 5 s)
    assert sets(3.0, []) == ["next"]
    assert sets(2.0, []) == []  # the bucket would refill in time, the window would not
    assert sets(2.0, [(now + 60_000, 10.0)]) == []  # it lets out too late
    assert sets(2.0, [(now + 1_000, 1.0)]) == ["next"]  # one more leaves it in time
    # a thousandth of a second of this rate (a token a millisecond) is one token more
    assert sets(3.0, [], margin_s=0.001) == []
    assert sets(4.0, [], margin_s=0.001) == ["next"]


def test_the_reserve_never_stops_sets_on_a_small_share() -> None:
    """A replica with a small share holds fewer tokens than a set plus the reserve: the
    reserve is room at the due times, which the rate fills, not tokens kept back."""
    # half a call a second, two held at most
    sim = _shown_and_a_set_waiting(PlannerConfig(), shown=("shown",), rate_per_minute=30)
    capacity = Capacity(
        tokens=sim.budget.capacity, rate_per_ms=sim.budget.rate_per_s / 1000, slots=8,
        set_slots=8,
    )  # fmt: skip
    assert capacity.tokens < 1 + PlannerConfig().stop_reserve
    picks = sim.planner.plan(sim.stores, capacity, sim.clock.now_ms(), sim.cost)
    assert [p.session_id for p in picks if p.kind is WorkKind.SET] == ["next"]


def test_sets_never_owe_more_clears_at_once_than_the_bucket_holds() -> None:
    """Clears go out at their deadlines, not before: the bucket can hold at most its burst
    for the clears due together, however much the rate brings over the wait. A set whose
    clear would come due with more than that is not made."""
    for shown, made in ((4, True), (12, False)):
        names = tuple(f"s{n}" for n in range(shown))
        sim = Simulation(1, 6000, PlannerConfig(stop_reserve=0, stop_hold=0.0))
        sim.etags.update({*names, "next"})
        for offset, sid in enumerate(names, start=1):
            sim.event(sid, Status.TYPING, offset, timeout_ms=60_000)
        while sim.stores[0].queued_work or sim.flying:
            sim.round()
            sim.advance(STEP_MS)
        sim.event("next", Status.TYPING, shown + 1, timeout_ms=60_000)
        assert sim.stores[0].shown_webchat_count == shown
        # five tokens at most in the bucket, a token a second: a minute brings 60 more,
        # but the clears due within a second of one another are paid from at most six
        capacity = Capacity(tokens=5.0, rate_per_ms=1 / 1000, slots=8, set_slots=8, burst=5.0)
        picks = sim.planner.plan(sim.stores, capacity, sim.clock.now_ms(), sim.cost)
        assert [p.session_id for p in picks if p.kind is WorkKind.SET] == (
            ["next"] if made else []
        ), shown


def test_indicators_that_expire_together_are_all_cleared_within_the_slack() -> None:
    """Many conversations start typing at once with a long timeout (a backlog replayed, a
    broadcast everyone answers): the indicators shown expire together, and each is
    cleared within the I1 slack of its deadline."""
    sim = Simulation(1, 300)
    timeout = 20_000
    names = [f"s{n}" for n in range(120)]
    sim.etags.update(names)
    for offset, sid in enumerate(names, start=1):
        sim.event(sid, Status.TYPING, offset, timeout_ms=timeout)
    deadline = T0 + timeout
    lags: list[int] = []
    while sim.clock.now_ms() < deadline + 30_000:
        sim.round()
        before = {sid for sid, up in sim.remote.items() if up}
        sim.advance(STEP_MS)
        lags += [sim.clock.now_ms() - deadline for sid in before if not sim.remote[sid]]
    assert lags, "some indicators were shown"
    assert max(lags) <= SLACK_MS + LATENCY_MS + STEP_MS


def test_a_refresh_in_the_round_still_owes_its_clear_to_the_sets_after_it() -> None:
    """A refresh picked in a round keeps its indicator shown: its clear is still owed at
    the deadline, and a set in the same round must leave room for it."""
    config = PlannerConfig(stop_reserve=0, stop_hold=0.0)
    sim = Simulation(1, 60, config)
    sim.etags.update({"shown", "next"})
    sim.event("shown", Status.TYPING, 1)
    sim.round()
    sim.advance(LATENCY_MS)
    offset = 1
    store = sim.stores[0]
    while not any(True for _ in store.queued_refreshes()):
        sim.advance(200)
        offset += 1
        sim.event("shown", Status.TYPING, offset)  # typing goes on past its expiresAt
    sim.event("next", Status.TYPING, offset + 1)
    now = sim.clock.now_ms()
    # nothing accrues: the refresh (1), the set (1), and both clears (2) come from the
    # tokens in hand
    for tokens, made in ((3.5, False), (4.0, True)):
        capacity = Capacity(tokens=tokens, rate_per_ms=0.0, slots=8, set_slots=8)
        picks = sim.planner.plan(sim.stores, capacity, now, sim.cost)
        assert [(p.session_id, p.kind) for p in picks] == [
            ("shown", WorkKind.REFRESH),
            *([("next", WorkKind.SET)] if made else []),
        ], tokens


def test_sets_leave_room_for_the_refresh_a_shown_messaging_indicator_owes() -> None:
    """A messaging indicator owes no clear (it lapses by itself), but while typing goes
    on past its "shown until" it owes a refresh before then (I2): a set must not take the
    token that refresh needs, or the indicator lapses mid-typing (flicker)."""
    clock = ManualClock(T0)
    store = PartitionStore(0, CONFIG, clock)
    store.on_event(_messaging_event("shown", T0, 1), 1)
    [work] = store.take_work(5)
    store.on_result(work, SinkResult(Outcome.APPLIED, http_status=202, attempts=1))
    assert work.desired is not None
    clock.advance(3000)  # typing goes on past "shown until" (T0 + 5 s): a refresh is owed
    store.on_event(_messaging_event("shown", clock.now_ms(), 2), 2)
    store.on_event(_messaging_event("next", clock.now_ms(), 3), 3)
    store.on_tick()
    assert [s.sid for s in store.queued_sets()] == ["next"]
    assert not any(True for _ in store.queued_refreshes())  # due in 1.4 s
    now = clock.now_ms()
    planner = Planner(PlannerConfig())

    def sets(tokens: float, rate_per_ms: float = 0.0) -> list[str]:
        capacity = Capacity(tokens=tokens, rate_per_ms=rate_per_ms, slots=8, set_slots=8)
        picks = planner.plan([store], capacity, now, lambda s: 1)
        return [p.session_id for p in picks if p.kind is WorkKind.SET]

    assert sets(1.0) == []  # the only token is the refresh's
    assert sets(2.0) == ["next"]
    # a token a second: the refresh is paid by what accrues before it is due
    assert sets(1.0, rate_per_ms=1 / 1000) == ["next"]


def _messaging_event(sid: str, at: int, offset: int, timeout_ms: int = 20_000) -> TypingEvent:
    communication = f"0e9a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a{zlib.crc32(sid.encode()) % 100:02d}"
    return TypingEvent.model_validate(
        {
            "event_id": f"{sid}-{offset}",
            "session_id": sid,
            "status": "typing",
            "occurred_at": at,
            "timeout_ms": timeout_ms,
            "target": {
                "kind": "agent_typing",
                "conversation_id": "c0b5a0d4-5a3f-4a1e-8d6b-6b7a1c2d3e4f",
                "communication_id": communication,
            },
        }
    )


def test_sets_leave_room_for_the_re_send_of_a_messaging_call_that_may_not_have_landed() -> None:
    """A messaging call answered 5xx is recorded as shown and sent again after its backoff
    while still wanted, whatever its "shown until" (it may not be shown at all): a set must
    not take the token that re-send needs."""
    clock = ManualClock(T0)
    store = PartitionStore(0, CONFIG, clock)
    store.on_event(_messaging_event("shown", T0, 1, timeout_ms=3000), 1)
    [work] = store.take_work(5)
    store.on_result(work, SinkResult(Outcome.FAILED, http_status=503, attempts=1, ambiguous=True))
    store.on_event(_messaging_event("next", clock.now_ms(), 2), 2)
    store.on_tick()
    assert store.is_backing_off("shown")
    assert [s.sid for s in store.queued_sets()] == ["next"]
    planner = Planner(PlannerConfig())

    def sets(tokens: float) -> list[str]:
        capacity = Capacity(tokens=tokens, rate_per_ms=0.0, slots=8, set_slots=8)
        picks = planner.plan([store], capacity, clock.now_ms(), lambda s: 1)
        return [p.session_id for p in picks if p.kind is WorkKind.SET]

    assert sets(1.0) == []  # the only token is the re-send's
    assert sets(2.0) == ["next"]


def test_a_read_back_in_the_round_still_owes_the_clear_of_the_set_it_may_find() -> None:
    """A read-back picked in a round resolves a set whose outcome is unknown: if it
    landed, the indicator is shown and its clear is owed at the deadline, so a set in the
    same round must leave room for it (as it does for a refresh's)."""
    clock = ManualClock(T0)
    store = PartitionStore(0, CONFIG, clock)
    for offset, sid in enumerate(("doubt", "next")):
        store.on_event(
            TypingEvent(event_id=sid, session_id=sid, status=Status.TYPING, occurred_at=T0),
            offset,
        )
    [work] = store.take_work(1)  # "doubt" goes out, and its answer is lost in a crash
    assert work.session_id == "doubt"
    store = PartitionStore.restore(0, CONFIG, clock, store.drain().changelog)
    assert [s.sid for s in store.queued_clears()] == ["doubt"]  # read back first
    planner = Planner(PlannerConfig(stop_reserve=0, stop_hold=0.0))

    def picks(tokens: float) -> list[tuple[str, WorkKind]]:
        capacity = Capacity(tokens=tokens, rate_per_ms=0.0, slots=8, set_slots=8)
        return [(p.session_id, p.kind) for p in planner.plan([store], capacity, T0, lambda s: 1)]

    # nothing accrues: the read-back (1), the set (1), and the clears of both (2) come
    # from the tokens in hand
    assert picks(3.0) == [("doubt", WorkKind.RESOLVE)]
    assert picks(4.0) == [("doubt", WorkKind.RESOLVE), ("next", WorkKind.SET)]
