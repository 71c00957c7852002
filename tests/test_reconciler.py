"""The reconciler bounds concurrent calls and keeps room for clears behind slow sets."""

from __future__ import annotations

import asyncio

from processor.domain import Indicator, Outcome, SinkResult, Status
from processor.runtime.reconciler import Reconciler


class GatedSink:
    """A sink whose sets wait until released (as when the API budget is spent)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls: list[tuple[str, bool]] = []

    async def apply(self, session_id: str, desired: Indicator | None) -> SinkResult:
        self.calls.append((session_id, desired is None))
        if desired is not None:
            await self.release.wait()
        return SinkResult(Outcome.APPLIED, http_status=200, attempts=1)


def indicator() -> Indicator:
    return Indicator(Status.TYPING, 1, 2, 1)


async def test_sets_cannot_take_the_slots_kept_for_clears() -> None:
    sink = GatedSink()
    reconciler = Reconciler(sink, max_in_flight=8)
    results: list[SinkResult] = []
    launched = 0
    while reconciler.free_set_slots:
        reconciler.launch(f"set-{launched}", indicator(), results.append)
        launched += 1
    assert launched == 6  # 8 slots, a quarter kept for clears
    assert reconciler.free_slots == 2
    cleared = asyncio.Event()

    def on_clear(result: SinkResult) -> None:
        results.append(result)
        cleared.set()

    reconciler.launch("clear-1", None, on_clear)
    async with asyncio.timeout(5):
        await cleared.wait()
    assert sink.calls[-1] == ("clear-1", True)
    sink.release.set()
    assert await reconciler.wait_idle(5)
    assert len(results) == 7
    assert reconciler.free_set_slots == 6


async def test_finished_calls_wake_listeners() -> None:
    sink = GatedSink()
    reconciler = Reconciler(sink, max_in_flight=2)
    woken = asyncio.Event()
    unsubscribe = reconciler.on_capacity(woken.set)
    reconciler.launch("c", None, lambda _: None)
    async with asyncio.timeout(5):
        await woken.wait()
    unsubscribe()
    assert reconciler.in_flight == 0
