"""How well the planner spends a tight budget, in seconds instead of minutes: the stores, the
planner and the API budget as shipped, on a simulated clock, against a simulated Genesys
that applies each call after 15-40 ms per request. A share of PATCHes (`--conflicts`, 2% by
default, as the demo) is answered 412: the sink's re-read and retry go out at once, unplanned,
into the budget's debt, as they do against Genesys. A share of requests (`--errors`, none by
default) is answered 5xx: the sink retries after its jittered backoff, unplanned too; the
last of its attempts is let through (a call failing every attempt, `errors` cubed, is not
simulated).

For each traffic model it prints, averaged over seeds: the fidelity of the planner as
shipped; the same planner with every participant weighed alike (no learned burst
lengths); a clairvoyant ranking that knows how long every burst will last (the planner
with each set valued at its true remaining typing per call it will cost); and the ceiling
under I2 (the budget bound with each burst's refreshes paid, see `demo.report`). The
clairvoyant column is what no online scheduler can beat by ranking alone: it tells how
much is left to gain, and what a fidelity target can ask.

    python bench/bench_scheduling.py                      # 200 sessions, 60 s, 300/min
    python bench/bench_scheduling.py --sessions 150 --seeds 1,2,3,4,5
    python bench/bench_scheduling.py --sessions 150 --conflicts 0.1
    python bench/bench_scheduling.py --sessions 150 --errors 0.05
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import statistics
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Any

from rich.console import Console
from rich.table import Table

from processor.budget import START_LEVEL, ApiBudget
from processor.clock import ManualClock
from processor.demo.report import accuracy, fidelity, percentile
from processor.demo.runner import budget_bounds
from processor.domain import Outcome, SinkResult
from processor.intervals import Interval
from processor.loadgen import TYPIST_MIXES, LoadProfile, TrafficModel, expected_intervals
from processor.planner import Capacity, Planner, PlannerConfig
from processor.settings import TypingSettings
from processor.sink.backoff import Backoff
from processor.sink.config import SinkConfig
from processor.state import EngineConfig, PartitionStore, Work, WorkKind
from processor.state.session import Session

T0 = 1_700_000_000_000
STEP_MS = 5
MAX_IN_FLIGHT = 32
SET_SLOTS = 24  # as the reconciler keeps a quarter of its slots for clears
SINK: dict[str, Any] = {f.name: f.default for f in fields(SinkConfig)}
"""The sink's defaults: how often it retries a 412 and a 5xx, and its backoff."""
DRAIN_MS = 25_000  # after the traffic: every indicator settles

# the traffic models (sessions, duration and seed are set per run)
TRAFFIC: dict[str, LoadProfile] = {
    "demo": LoadProfile(),
    "short bursts": LoadProfile(burst_ms=(500, 3000), idle_ms=(3000, 20_000)),
    "varied typists": LoadProfile(
        burst_ms=(500, 3000), idle_ms=(3000, 20_000), typist_spread=TYPIST_MIXES["varied"][0]
    ),
    "agents type longer": LoadProfile(
        burst_ms=(500, 3000),
        idle_ms=(3000, 15_000),
        typist_spread=TYPIST_MIXES["agents-long"][0],
        agent_burst_scale=TYPIST_MIXES["agents-long"][1],
    ),
}
PLANNERS = ("shipped", "unweighted", "clairvoyant")


class _Clairvoyant(Planner):
    """Values a set at the typing it will really show per call it will cost."""

    def __init__(self, truth: dict[str, list[Interval]], refresh_span_ms: int) -> None:
        super().__init__()
        self._truth = truth
        self._span = refresh_span_ms

    def _value(self, s: Session, store: PartitionStore, now: int) -> float:
        for start, stop in self._truth.get(s.sid, []):
            if start <= now < stop:
                remaining = stop - now
                value = remaining / (2 + remaining / self._span)
                if s.remote is not None:
                    value *= self._config.status_change_weight  # as the shipped planner
                return value
        return -1.0


@dataclass(order=True)
class _Call:
    done_at: int
    seq: int
    work: Work = field(compare=False)
    store: PartitionStore = field(compare=False)
    latency_ms: float = field(compare=False)


@dataclass(frozen=True, slots=True)
class Figures:
    """What one simulated run measured (shares of the bound, of the truth, of the budget)."""

    fidelity: float | None
    """None when the bound is 0 (no call made, or no typing): not measurable."""
    ceiling: float | None
    phantom: float
    clear_lag_p99_ms: float
    calls: int
    budget: float
    """What the budget allowed until the last call (its bucket, then its rate)."""


def simulate(
    traffic: str,
    planner: str,
    sessions: int,
    duration_s: float,
    seed: int,
    rate: int,
    partitions: int = 4,
    conflict_rate: float = 0.0,
    error_rate: float = 0.0,
) -> Figures:
    """One run: the traffic model's events into the stores, the planner spending the budget."""
    typing = TypingSettings()
    profile = replace(TRAFFIC[traffic], sessions=sessions, duration_s=duration_s, seed=seed)
    events = [item.event for item in TrafficModel(profile).schedule(T0).events]
    truth = expected_intervals(events, typing.timeout_matrix)
    clock = ManualClock(T0)
    elapsed_s = [0.0]
    budget = ApiBudget(rate, monotonic=lambda: elapsed_s[0])
    config = EngineConfig.from_settings(typing)
    stores = [PartitionStore(p, config, clock) for p in range(partitions)]
    if planner == "clairvoyant":
        span = typing.timeout_matrix.typing.customer * (1 - config.refresh_fraction)
        chooser: Planner = _Clairvoyant(truth, int(span))
    else:
        chooser = Planner(PlannerConfig(weigh_typists=planner == "shipped"))
    rng = random.Random(seed)
    backoff = Backoff(SINK["backoff_base_s"], SINK["backoff_cap_s"], rng)
    # delivered a few ms after they happen, as a consumer sees them
    arrivals = sorted((e.occurred_at + rng.randint(2, 10), n, e) for n, e in enumerate(events))
    etags: set[str] = set()
    calls: list[_Call] = []
    shown_since: dict[str, int] = {}
    shown: dict[str, list[Interval]] = {}
    sets_flying = 0
    spent = 0
    seq = itertools.count()
    next_event = 0
    last_call_at = T0
    end = T0 + int(duration_s * 1000) + DRAIN_MS

    def cost(s: Session) -> int:
        return 1 if s.sid in etags else 2

    def store_of(sid: str) -> PartitionStore:
        return stores[zlib.crc32(sid.encode()) % partitions]

    now = T0
    while now <= end:
        clock.set(now)
        elapsed_s[0] = (now - T0) / 1000
        while calls and calls[0].done_at <= now:
            call = heapq.heappop(calls)
            work = call.work
            if work.kind in (WorkKind.SET, WorkKind.REFRESH):
                sets_flying -= 1
            if work.kind is not WorkKind.RESOLVE:
                if work.desired is not None:
                    shown_since.setdefault(work.session_id, now)
                elif work.session_id in shown_since:
                    since = shown_since.pop(work.session_id)
                    shown.setdefault(work.session_id, []).append((since, now))
            result = SinkResult(
                Outcome.APPLIED,
                http_status=200,
                attempts=1,
                latency_ms=call.latency_ms,
                call_latencies_ms=(call.latency_ms,),
            )
            call.store.on_result(work, result)
        while next_event < len(arrivals) and arrivals[next_event][0] <= now:
            _, offset, event = arrivals[next_event]
            store_of(event.session_id).on_event(event, offset)
            next_event += 1
        for store in stores:
            store.on_tick()
        free = MAX_IN_FLIGHT - len(calls)
        capacity = Capacity.of(budget, now, free, min(free, SET_SLOTS - sets_flying))
        for pick in chooser.plan(stores, capacity, now, cost):
            taken = pick.store.take(pick.session_id)
            if taken is None:
                continue
            budget.spend(pick.cost)
            spent += pick.cost
            last_call_at = now
            etags.add(taken.session_id)
            requests = pick.cost
            if taken.kind is not WorkKind.RESOLVE:
                # a 412: the sink re-reads and retries at once, beyond what was prepaid
                for _ in range(SINK["max_conflict_attempts"] - 1):
                    if rng.random() >= conflict_rate:
                        break
                    budget.spend(2, planned=False)
                    spent += 2
                    requests += 2
            waited_ms = 0.0
            for retry in range(SINK["max_transient_attempts"] - 1):
                if rng.random() >= error_rate:
                    break
                # a 5xx: the same request again after the backoff (spent when it goes)
                waited_ms += 1000 * backoff.delay(retry)
                budget.spend(1, planned=False)
                spent += 1
                requests += 1
            latency = waited_ms + sum(rng.uniform(15, 40) for _ in range(requests))
            if taken.kind in (WorkKind.SET, WorkKind.REFRESH):
                sets_flying += 1
            heapq.heappush(calls, _Call(now + int(latency), next(seq), taken, pick.store, latency))
        for store in stores:
            store.drain()
        now += STEP_MS
    for sid, since in shown_since.items():
        shown.setdefault(sid, []).append((since, now))
    measured = accuracy(truth, shown, now)
    bound, ceiling = budget_bounds(events, truth, dict.fromkeys(truth, "webchat"), typing, spent)
    return Figures(
        fidelity=fidelity(measured.shown_truth_ms, bound),
        ceiling=fidelity(ceiling, bound),
        phantom=measured.phantom_ms / measured.truth_ms if measured.truth_ms else 0.0,
        clear_lag_p99_ms=percentile(measured.clear_latencies_ms, 99) or 0.0,
        calls=spent,
        # the bucket starts at START_LEVEL, not full (see `processor.budget`)
        budget=rate * (last_call_at - T0) / 60_000 + min(budget.capacity, START_LEVEL),
    )


def _run(
    job: tuple[str, str, int, float, int, int, float, float],
) -> tuple[str, str, Figures]:
    traffic, planner, sessions, duration, seed, rate, conflicts, errors = job
    figures = simulate(
        traffic, planner, sessions, duration, seed, rate,
        conflict_rate=conflicts, error_rate=errors,
    )  # fmt: skip
    return traffic, planner, figures


def _mean_share(values: list[float | None]) -> str:
    """The mean of the seeds whose share is measurable (a run without calls has none)."""
    measured = [value for value in values if value is not None]
    if not measured:
        return "n/a"
    mean = f"{statistics.mean(measured):.2f}"
    return mean if len(measured) == len(values) else f"{mean} ({len(measured)} seeds)"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds; default: 60")
    parser.add_argument("--rate", type=int, default=300, help="calls per minute; default: 300")
    parser.add_argument(
        "--seeds", type=lambda text: [int(x) for x in text.split(",")], default=[1, 2, 3]
    )
    parser.add_argument(
        "--conflicts",
        type=float,
        default=0.02,
        help="share of PATCHes answered 412 (re-read and retried at once); default: 0.02",
    )
    parser.add_argument(
        "--errors",
        type=float,
        default=0.0,
        help="share of requests answered 5xx (retried after a backoff); default: 0",
    )
    parser.add_argument("--jobs", type=int, default=2, help="processes; default: 2")
    args = parser.parse_args(argv)
    load = (args.conflicts, args.errors)
    jobs = [
        (traffic, planner, args.sessions, args.duration, seed, args.rate, *load)
        for traffic in TRAFFIC
        for planner in PLANNERS
        for seed in args.seeds
    ]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(_run, jobs))
    table = Table(
        title=f"fidelity under quota, simulated: {args.sessions} sessions, {args.duration:.0f} s,"
        f" {args.rate}/min, {args.conflicts:.0%} conflicts, {args.errors:.0%} 5xx, mean of seeds"
        f" {','.join(map(str, args.seeds))}"
    )
    columns = ("ceiling under I2", "phantom (shipped)", "clear lag p99 (worst seed)")
    for column in ("traffic", *PLANNERS, *columns, "calls / budget"):
        table.add_column(column, justify="left" if column == "traffic" else "right")
    for traffic in TRAFFIC:
        by_planner = {
            planner: [out for t, p, out in results if t == traffic and p == planner]
            for planner in PLANNERS
        }
        shipped = by_planner["shipped"]
        table.add_row(
            traffic,
            *(_mean_share([o.fidelity for o in by_planner[p]]) for p in PLANNERS),
            _mean_share([o.ceiling for o in shipped]),
            f"{100 * statistics.mean(o.phantom for o in shipped):.2f}%",
            f"{max(o.clear_lag_p99_ms for o in shipped) / 1000:.2f} s",
            f"{statistics.mean(o.calls / o.budget for o in shipped):.0%}",
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
