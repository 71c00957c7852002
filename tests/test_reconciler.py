"""The reconciler bounds concurrent calls, keeps room for clears, sends a call only once
its intent is acknowledged, and picks the endpoint each target needs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from processor.budget import ApiBudget
from processor.domain import (
    AgentTypingTarget,
    ChangeReason,
    Indicator,
    OpenMessagingTarget,
    Outcome,
    SinkResult,
    Status,
)
from processor.runtime.reconciler import Reconciler
from processor.state import Work, WorkKind

CONV = "c0b5a0d4-5a3f-4a1e-8d6b-6b7a1c2d3e4f"
COMM = "0e9a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b"


class GatedSink:
    """A sink whose sets wait until released, recording every call it gets."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls: list[tuple[Any, ...]] = []
        self.budget = ApiBudget(600)

    def cached_etag(self, session_id: str) -> str | None:
        return None

    def forget(self, session_id: str) -> None:
        self.calls.append(("forget", session_id))

    async def apply(
        self,
        session_id: str,
        desired: Indicator | None,
        *,
        version: int | None = None,
        prepaid: int = 0,
    ) -> SinkResult:
        self.calls.append(("apply", session_id, desired is None, prepaid))
        if desired is not None:
            await self.release.wait()
        return SinkResult(Outcome.APPLIED, http_status=200, attempts=1)

    async def read_back(self, session_id: str, *, prepaid: int = 0) -> SinkResult:
        self.calls.append(("read_back", session_id))
        return SinkResult(Outcome.APPLIED, http_status=200, attempts=1)

    async def agent_typing(
        self,
        conversation_id: str,
        communication_id: str,
        duration_ms: int,
        *,
        until_ms: int | None = None,
        prepaid: int = 0,
    ) -> SinkResult:
        self.calls.append(("agent_typing", conversation_id, communication_id, duration_ms))
        return SinkResult(Outcome.APPLIED, http_status=202, attempts=1)

    async def open_messaging_typing(
        self,
        integration_id: str,
        from_id: str,
        from_id_type: str,
        nickname: str | None,
        duration_ms: int,
        *,
        until_ms: int | None = None,
        prepaid: int = 0,
    ) -> SinkResult:
        self.calls.append(("open", integration_id, from_id, from_id_type, nickname, duration_ms))
        return SinkResult(Outcome.APPLIED, http_status=202, attempts=1)


def work(sid: str, kind: WorkKind = WorkKind.SET, target: Any = None) -> Work:
    desired = None if kind is WorkKind.CLEAR else Indicator(Status.TYPING, 1, 2, 1)
    return Work(sid, desired, ChangeReason.EVENT, kind, 1, target=target, duration_ms=3000)


def acked() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


async def test_sets_cannot_take_the_slots_kept_for_clears() -> None:
    sink = GatedSink()
    reconciler = Reconciler(sink, max_in_flight=8)
    results: list[SinkResult] = []
    launched = 0
    while reconciler.free_set_slots:
        reconciler.launch(work(f"set-{launched}"), 1, acked(), results.append)
        launched += 1
    assert launched == 6  # 8 slots, a quarter kept for clears
    assert reconciler.free_slots == 2
    cleared = asyncio.Event()

    def on_clear(result: SinkResult) -> None:
        results.append(result)
        cleared.set()

    reconciler.launch(work("clear-1", WorkKind.CLEAR), 1, acked(), on_clear)
    async with asyncio.timeout(5):
        await cleared.wait()
    assert sink.calls[-1] == ("apply", "clear-1", True, 1)
    sink.release.set()
    assert await reconciler.wait_idle(5)
    assert len(results) == 7
    assert reconciler.free_set_slots == 6


async def test_reserved_work_holds_its_slot_until_launched_or_released() -> None:
    """Work handed to a worker counts against the slots (sets against those sets may
    take) before it is launched; launching it moves it into its slot, releasing it frees
    the slot and says so."""
    sink = GatedSink()
    reconciler = Reconciler(sink, max_in_flight=8)
    freed: list[None] = []
    reconciler.on_capacity(lambda: freed.append(None))
    sets = [work(f"set-{n}") for n in range(6)]
    for reserved in sets:
        reconciler.reserve(reserved)
    reconciler.reserve(sets[0])  # once only
    assert (reconciler.free_slots, reconciler.free_set_slots, reconciler.reserved) == (2, 0, 6)
    clear = work("clear-1", WorkKind.CLEAR)
    reconciler.reserve(clear)
    assert (reconciler.free_slots, reconciler.free_set_slots) == (1, 0)
    reconciler.launch(sets[0], 1, acked(), lambda _: None)
    assert (reconciler.free_slots, reconciler.free_set_slots) == (1, 0)
    assert (reconciler.in_flight, reconciler.reserved) == (1, 6)
    reconciler.release(sets[1])
    assert freed == [None]
    assert (reconciler.free_slots, reconciler.free_set_slots) == (2, 1)
    reconciler.release(sets[1])  # no longer reserved: nothing changes
    assert freed == [None]
    reconciler.release(clear)
    assert (reconciler.free_slots, reconciler.free_set_slots) == (3, 1)
    sink.release.set()
    assert await reconciler.wait_idle(5)
    assert (reconciler.free_slots, reconciler.free_set_slots) == (4, 2)


async def test_a_call_waits_for_its_intent_to_be_acknowledged() -> None:
    sink = GatedSink()
    sink.release.set()
    reconciler = Reconciler(sink, max_in_flight=2)
    recorded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    delivered: list[SinkResult] = []
    reconciler.launch(work("s1"), 1, recorded, delivered.append)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sink.calls == []  # nothing goes out before the changelog has the intent
    recorded.set_result(None)
    assert await reconciler.wait_idle(5)
    assert [c[0] for c in sink.calls] == ["apply"]
    assert delivered[0].outcome is Outcome.APPLIED


async def test_a_call_whose_intent_was_not_recorded_is_not_sent() -> None:
    sink = GatedSink()
    reconciler = Reconciler(sink, max_in_flight=2)
    recorded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    recorded.set_exception(RuntimeError("broker gone"))
    delivered: list[SinkResult] = []
    level = sink.budget.level()
    sink.budget.spend(1)  # as the scheduler does when it takes the work
    reconciler.launch(work("s1"), 1, recorded, delivered.append)
    assert await reconciler.wait_idle(5)
    assert sink.calls == []
    assert (delivered[0].outcome, delivered[0].ambiguous) == (Outcome.FAILED, False)
    assert sink.budget.level() == pytest.approx(level, abs=0.1)  # the token comes back


async def test_a_call_cancelled_while_it_waits_leaves_the_acknowledgement_alone() -> None:
    """A call of a revoked partition cancelled before its intent's acknowledgement came:
    that acknowledgement is the flush's too, which must still complete, and the call's
    budget comes back."""
    sink = GatedSink()
    reconciler = Reconciler(sink, max_in_flight=2)
    recorded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    level = sink.budget.level()
    sink.budget.spend(1)
    call = reconciler.launch(work("s1"), 1, recorded, lambda _: None)
    await asyncio.sleep(0)  # let it start waiting
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    assert not recorded.cancelled()
    assert sink.budget.level() == pytest.approx(level, abs=0.1)
    assert sink.calls == []


async def test_a_call_cancelled_before_it_ever_ran_gives_its_budget_back() -> None:
    """Cancelled before its task's first step (a revocation right after the scheduler
    took the work), the call runs none of its code: its prepaid tokens still come back."""
    sink = GatedSink()
    reconciler = Reconciler(sink, max_in_flight=2)
    level = sink.budget.level()
    sink.budget.spend(2)  # as the scheduler prepays a GET and a PATCH
    call = reconciler.launch(work("s1"), 2, acked(), lambda _: None)
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    assert call.cancelled()
    assert sink.calls == []
    assert sink.budget.spent == 0
    assert sink.budget.level() == pytest.approx(level, abs=0.1)


async def test_each_target_goes_to_its_endpoint() -> None:
    sink = GatedSink()
    reconciler = Reconciler(sink, max_in_flight=4)
    integration = "2f0c6a4e-8d8b-4c8e-9a55-0d4c5b7a1e21"
    reconciler.launch(work("a", target=AgentTypingTarget(CONV, COMM)), 1, acked(), lambda r: None)
    reconciler.launch(
        work("b", target=OpenMessagingTarget(integration, "cust", "Email", "Ann")),
        1,
        acked(),
        lambda r: None,
    )
    reconciler.launch(work("c", WorkKind.RESOLVE), 1, acked(), lambda r: None)
    assert await reconciler.wait_idle(5)
    assert sorted(sink.calls) == [
        ("agent_typing", CONV, COMM, 3000),
        ("open", integration, "cust", "Email", "Ann", 3000),
        ("read_back", "c"),
    ]


async def test_finished_calls_wake_listeners() -> None:
    sink = GatedSink()
    reconciler = Reconciler(sink, max_in_flight=2)
    woken = asyncio.Event()
    unsubscribe = reconciler.on_capacity(woken.set)
    reconciler.launch(work("c", WorkKind.CLEAR), 1, acked(), lambda _: None)
    async with asyncio.timeout(5):
        await woken.wait()
    unsubscribe()
    assert reconciler.in_flight == 0
