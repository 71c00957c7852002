"""The state engine alone, on one core: event throughput, tick cost and memory per session.

No Kafka, no HTTP: a `PartitionStore` driven by a `ManualClock`, with events built by
`TypingEvent.model_construct` (the runtime hands the engine already-validated events).

    python bench/bench_state.py [--events 500000] [--sessions 1000000]

Measures
- suppressed repeats: typing events repeating the wanted status within the window;
- state changes: every event changes what a session wants (typing <-> paused), and the
  full cycle event -> take_work -> on_result(applied) -> drain;
- tick cost with `--sessions` tracked sessions: a tick with nothing due, and ticks that
  expire a slice of them (cost per expired session);
- bytes per tracked session (tracemalloc), engine-owned memory in steady state
  (indicator shown and acknowledged, timers pending); session-id strings are counted
  apart, since the runtime decodes them from the input anyway.
Targets: >= 300k suppressed events/s, >= 100k changes/s, <= 400 bytes/session.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable

from processor.clock import ManualClock
from processor.domain import Outcome, SinkResult, Status
from processor.models import TypingEvent
from processor.state import EngineConfig, PartitionStore

T0 = 1_700_000_000_000
APPLIED = SinkResult(Outcome.APPLIED, http_status=200, attempts=1)
DRAIN_EVERY = 1000  # the runtime drains per fetched batch


def event(eid: str, sid: str, status: Status, at: int, timeout: int | None = None) -> TypingEvent:
    return TypingEvent.model_construct(
        event_id=eid,
        session_id=sid,
        status=status,
        occurred_at=at,
        timeout_ms=timeout,
        participant=None,
        channel=None,
    )


def timed(run: Callable[[], None]) -> float:
    # Pre-built inputs are long-lived: keep the collector from rescanning them, so that
    # the numbers are the engine's. (In a process, a full collection with a million
    # tracked sessions takes about 0.25 s; the collector runs one rarely.)
    gc.collect()
    gc.freeze()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench_suppressed(n: int) -> float:
    """Events/s for repeats of the wanted status within the window (1000 sessions).

    Time moves on by 1 ms per 1000 events and each event carries the current time, so
    every repeat extends its session's deadline (and keeps its refresh timer), as live
    typing does; every drain writes a changelog record per session.
    """
    clock = ManualClock(T0)
    store = PartitionStore(0, EngineConfig(), clock)
    sids = [f"sess-{i}" for i in range(1000)]
    for i, sid in enumerate(sids):
        store.on_event(event(f"warm-{i}", sid, Status.TYPING, T0), i)
    for work in store.take_work(len(sids)):
        store.on_result(work, APPLIED)
    store.drain()
    events = [
        event(f"ev-{i}", sids[i % 1000], Status.TYPING, T0 + i // DRAIN_EVERY) for i in range(n)
    ]

    def run() -> None:
        on_event = store.on_event
        for offset, ev in enumerate(events):
            on_event(ev, offset)
            if offset % DRAIN_EVERY == DRAIN_EVERY - 1:
                store.drain()
                clock.advance(1)
        store.drain()

    elapsed = timed(run)
    assert store.queued_work == 0, "repeats must not cause work"
    return n / elapsed


def bench_changes(n: int) -> tuple[float, float]:
    """Events/s when every event changes a session's wanted status; and full cycles/s."""
    clock = ManualClock(T0)
    store = PartitionStore(0, EngineConfig(), clock)
    sessions = 10_000
    sids = [f"sess-{i}" for i in range(sessions)]
    flip = (Status.TYPING, Status.PAUSED)
    events = [event(f"ev-{i}", sids[i % sessions], flip[(i // sessions) % 2], T0) for i in range(n)]

    def changes_only() -> None:
        on_event = store.on_event
        for offset, ev in enumerate(events):
            on_event(ev, offset)
            if offset % DRAIN_EVERY == 0:
                store.drain()
        store.drain()

    changes_rate = n / timed(changes_only)

    clock2 = ManualClock(T0)
    store2 = PartitionStore(0, EngineConfig(), clock2)
    events2 = [event(f"cy-{i}", e.session_id, e.status, T0) for i, e in enumerate(events)]

    def full_cycle() -> None:
        on_event = store2.on_event
        for offset, ev in enumerate(events2):
            on_event(ev, offset)
            if offset % 100 == 0:
                for work in store2.take_work(1000):
                    store2.on_result(work, APPLIED)
            if offset % DRAIN_EVERY == 0:
                store2.drain()
        for work in store2.take_work(sessions):
            store2.on_result(work, APPLIED)
        store2.drain()

    cycle_rate = n / timed(full_cycle)
    return changes_rate, cycle_rate


def populate(store: PartitionStore, clock: ManualClock, sids: list[str]) -> None:
    """One typing indicator per session, shown and acknowledged; deadlines spread over 60 s."""
    for i, sid in enumerate(sids):
        store.on_event(event(f"p-{i}", sid, Status.TYPING, T0, 500 + i % 59_500), i)
        if i % 10_000 == 9_999:
            for work in store.take_work(10_000):
                store.on_result(work, APPLIED)
            store.drain()
    for work in store.take_work(len(sids)):
        store.on_result(work, APPLIED)
    store.drain()


def bench_memory_and_ticks(sessions: int) -> dict[str, float]:
    clock = ManualClock(T0)
    sids = [f"session-{i:08d}" for i in range(sessions)]
    id_bytes = sum(sys.getsizeof(s) for s in sids) / sessions
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    store = PartitionStore(0, EngineConfig(), clock)
    populate(store, clock, sids)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert store.tracked_sessions == sessions

    # A tick with nothing due: must not depend on the number of sessions. Timed one by
    # one, median, after a few untimed ticks: the first allocations after tracemalloc
    # frees its tables make glibc consolidate millions of free chunks (half a second
    # once), which says nothing about the engine.
    clock.set(T0 + 400)
    for _ in range(100):
        store.on_tick()
    idle = statistics.median(timed(store.on_tick) for _ in range(1001))
    # Ticks every 10 ms through the first 5 s of deadlines: ~ sessions / 59.5 per second due.
    expired = 0
    elapsed = 0.0
    for _ in range(500):
        clock.advance(10)
        before = store.queued_work
        elapsed += timed(store.on_tick)
        expired += store.queued_work - before
    store.drain()
    return {
        "sessions": sessions,
        "bytes_per_session": used / sessions,
        "id_string_bytes_per_session": id_bytes,
        "idle_tick_us": idle * 1e6,
        "expired": expired,
        "tick_us_per_expired_session": elapsed / max(expired, 1) * 1e6,
        "tick_ms_mean": elapsed / 500 * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--sessions", type=int, default=1_000_000)
    args = parser.parse_args()

    suppressed = bench_suppressed(args.events)
    changes, cycles = bench_changes(args.events)
    memory = bench_memory_and_ticks(args.sessions)
    results = {
        "python": sys.version.split()[0],
        "suppressed_events_per_s": round(suppressed),
        "change_events_per_s": round(changes),
        "full_cycles_per_s": round(cycles),
        **{k: round(v, 2) for k, v in memory.items()},
    }
    print(f"suppressed repeats      {suppressed:>12,.0f} events/s   (target >= 300,000)")
    print(f"state changes           {changes:>12,.0f} events/s   (target >= 100,000)")
    print(f"event+take+apply cycle  {cycles:>12,.0f} events/s")
    print(f"tracked sessions        {memory['sessions']:>12,.0f}")
    print(f"bytes per session       {memory['bytes_per_session']:>12,.1f}          (target <= 400)")
    print(f"  + session-id string   {memory['id_string_bytes_per_session']:>12,.1f}")
    print(f"tick, nothing due       {memory['idle_tick_us']:>12,.2f} us")
    print(f"tick per expired sess.  {memory['tick_us_per_expired_session']:>12,.2f} us")
    print(f"tick every 10 ms (mean) {memory['tick_ms_mean']:>12,.3f} ms")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
