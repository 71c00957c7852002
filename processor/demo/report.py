"""Ground truth against what Genesys showed: phantom and missed typing time, latency.

Pure functions over interval lists, so the demo's numbers are testable without a stack.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from processor.intervals import Interval, merge, subtract, total


def shown_intervals(history: Iterable[dict[str, Any]], end_ms: int) -> list[Interval]:
    """When the emulator held an indicator, from its change history (`at_ms`, value)."""
    intervals: list[Interval] = []
    since: int | None = None
    for change in sorted(history, key=lambda c: int(c["at_ms"])):
        at = int(change["at_ms"])
        present = change.get("typing_indicator") is not None
        if present and since is None:
            since = at
        elif not present and since is not None:
            intervals.append((since, at))
            since = None
    if since is not None:
        intervals.append((since, max(since, end_ms)))
    return intervals


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values.

    The value of rank ceil(q/100 x n) (1-based): `q * n` first, so that whole ranks stay whole
    in floating point (0.99 * 100 is 98.99999999999999, 99 * 100 / 100 is 99.0).
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered) / 100) - 1))
    return ordered[rank]


def typing_shown_intervals(calls: Iterable[dict[str, Any]]) -> list[Interval]:
    """When a messaging indicator was shown: each accepted call, from its time to its
    "shown until" (`at_ms` + `duration`), merged."""
    return merge((int(c["at_ms"]), int(c["at_ms"]) + int(c["duration"])) for c in calls)


@dataclass(frozen=True, slots=True)
class Accuracy:
    """How truthful the indicators were, over a set of sessions."""

    truth_ms: int
    shown_ms: int
    phantom_ms: int
    missed_ms: int
    set_latencies_ms: list[float]
    clear_latencies_ms: list[float]

    @property
    def shown_truth_ms(self) -> int:
        """Typing time that was shown (truth minus missed)."""
        return self.truth_ms - self.missed_ms


def accuracy(
    truth: dict[str, list[Interval]],
    shown: dict[str, list[Interval]],
    end_ms: int,
    slack_ms: int = 0,
) -> Accuracy:
    """Compare truth with what was shown, session by session (sorted, disjoint intervals).

    Phantom: shown while nobody typed (beyond `slack_ms` after each truth interval, the
    allowance I1 gives a clear). Missed: typing that was not shown. Latencies, for each
    truth interval that was shown at all: from its start to the first set in it, and from
    its end to when the indicator went (or the next burst began, if it stayed up). A clear
    that never came counts up to `end_ms` (at least that late); a truth interval not over by
    `end_ms` has no clear lag yet.
    """
    truth_ms = shown_ms = phantom_ms = missed_ms = 0
    set_lat: list[float] = []
    clear_lat: list[float] = []
    for session_id in sorted(set(truth) | set(shown)):
        expected = truth.get(session_id, [])
        displayed = shown.get(session_id, [])
        allowed = [(start, stop + slack_ms) for start, stop in expected]
        truth_ms += total(expected)
        shown_ms += total(displayed)
        phantom_ms += total(subtract(displayed, merge(allowed)))
        missed_ms += total(subtract(expected, displayed))
        for index, (start, stop) in enumerate(expected):
            covering = [iv for iv in displayed if iv[0] < stop and iv[1] > start - slack_ms]
            if not covering:
                continue  # never shown: a miss, not a latency
            set_lat.append(float(max(0, covering[0][0] - start)))
            # shown on past the end, until it went or the next burst began
            following = expected[index + 1][0] if index + 1 < len(expected) else end_ms
            gone = min(covering[-1][1], following, end_ms)
            if stop < end_ms:
                clear_lat.append(float(max(0, gone - stop)))
    return Accuracy(truth_ms, shown_ms, phantom_ms, missed_ms, set_lat, clear_lat)


def bursts(truth: dict[str, list[Interval]]) -> list[int]:
    """Lengths of every true burst (each merged truth interval), in ms."""
    return [stop - start for intervals in truth.values() for start, stop in intervals]


def budget_bound(bursts_by_cost: dict[int, list[int]], calls: int, reads: int) -> float:
    """Most typing time any scheduler could show with `calls` Genesys calls (DESIGN §4b).

    Every shown burst costs at least `cost` calls (2 for a webchat session: a set and its
    clear; 1 for a messaging target), and `reads` calls are set aside as showing nothing
    (the GET each webchat session shown costs depends on the sessions picked: `read_once`).
    The bound is the fractional knapsack over bursts by length per call: with one kind it
    is the `(calls - reads) / cost` longest bursts.
    """
    budget = float(max(0, calls - reads))
    items = sorted(
        ((length / cost, length, cost) for cost, lengths in bursts_by_cost.items()
         for length in lengths),
        reverse=True,
    )  # fmt: skip
    bound = 0.0
    for _, length, cost in items:
        if budget <= 0:
            break
        share = min(1.0, budget / cost)
        bound += length * share
        budget -= cost * share
    return bound


def fidelity(shown_truth_ms: float, bound_ms: float) -> float | None:
    """Typing shown as a share of the budget bound; None when the bound is 0 (no calls
    made, or no typing to show): then nothing measures how well the calls were spent."""
    return None if bound_ms <= 0 else shown_truth_ms / bound_ms


def calls_to_show(
    burst: Interval,
    deadlines: list[tuple[int, int]],
    *,
    max_span_ms: int | None = None,
    clear: bool = True,
) -> int:
    """Fewest calls that keep `burst` shown from its start to its end while obeying I2:
    what a call shows lasts until the deadline known when it is made (`deadlines`: each
    event's `(occurred_at, deadline)`), at most `max_span_ms` (a messaging call's longest
    duration), so a burst that outlasts it needs a refresh, made as late as possible; a
    webchat burst also ends with a clear. Even a scheduler that knew the future pays this.
    """
    start, stop = burst

    def shown_until(at: int) -> int:
        until = max((d for t, d in deadlines if t <= at), default=at)
        return until if max_span_ms is None else min(until, at + max_span_ms)

    calls = 2 if clear else 1
    until = shown_until(start)
    while until < stop:
        later = shown_until(until - 1)  # the latest refresh that still comes in time
        if later <= until:
            break  # nothing known can carry it further
        calls += 1
        until = later
    return calls


def refresh_aware_bound(
    bursts_with_calls: Iterable[tuple[int, int]], calls: int, reads: int = 0
) -> float:
    """The budget bound with each burst at the calls it needs (`calls_to_show`), not at
    two: the most typing any scheduler that keeps I2 could show with `calls` calls.
    (`bursts_with_calls` may be any `(length, cost)` items, such as `read_once`'s.)"""
    by_cost: dict[int, list[int]] = {}
    for length, cost in bursts_with_calls:
        by_cost.setdefault(cost, []).append(length)
    return budget_bound(by_cost, calls, reads)


def read_once(
    sessions: Iterable[Iterable[tuple[int, int]]], read_cost: int = 1
) -> list[tuple[int, int]]:
    """The `(length, cost)` bursts of webchat sessions, each session's first call (its GET)
    charged to one of its bursts: the longest (the first of equals).

    A scheduler pays one GET for every session it shows, whichever sessions it picks, so a
    bound cannot charge the GETs of the sessions one run happened to show: one that showed
    fewer sessions, each for longer, would beat it. Charging the GET to a single burst of
    each session asks no more than any choice of bursts really costs (a burst of a session
    taken without that one goes without a GET), so the bound over these items still bounds
    every scheduler. The same burst is charged whatever the costs, so that dearer costs
    for every burst (refreshes paid) never give a higher bound.
    """
    items: list[tuple[int, int]] = []
    for session in sessions:
        bursts_of = list(session)
        if not bursts_of:
            continue
        best = max(range(len(bursts_of)), key=lambda i: bursts_of[i][0])
        for index, (length, cost) in enumerate(bursts_of):
            items.append((length, cost + read_cost if index == best else cost))
    return items
