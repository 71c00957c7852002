"""Ground truth against what Genesys showed: phantom and missed typing time, latency.

Pure functions over interval lists, so the demo's numbers are testable without a stack.
"""

from __future__ import annotations

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
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass(frozen=True, slots=True)
class Accuracy:
    """How truthful the indicators were, over all sessions."""

    truth_ms: int
    shown_ms: int
    phantom_ms: int
    missed_ms: int
    set_latencies_ms: list[float]
    clear_latencies_ms: list[float]


def accuracy(
    truth: dict[str, list[Interval]],
    history: dict[str, list[dict[str, Any]]],
    end_ms: int,
    slack_ms: int = 0,
) -> Accuracy:
    """Compare truth with what was shown.

    Phantom: shown while nobody typed (beyond `slack_ms` after each truth interval, the
    allowance I1 gives a clear). Missed: typing that was not shown. Latencies: from the
    start of each truth interval to the first set after it, and from each end to the first
    clear after it.
    """
    truth_ms = shown_ms = phantom_ms = missed_ms = 0
    set_lat: list[float] = []
    clear_lat: list[float] = []
    for session_id in sorted(set(truth) | set(history)):
        expected = truth.get(session_id, [])
        changes = history.get(session_id, [])
        shown = shown_intervals(changes, end_ms)
        allowed = [(start, stop + slack_ms) for start, stop in expected]
        truth_ms += total(expected)
        shown_ms += total(shown)
        phantom_ms += total(subtract(shown, merge(allowed)))
        missed_ms += total(subtract(expected, shown))
        starts = [start for start, _ in shown]
        stops = [stop for _, stop in shown]
        for start, stop in expected:
            first_set = next((s for s in starts if s >= start - slack_ms), None)
            if first_set is not None and first_set <= stop:
                set_lat.append(float(max(0, first_set - start)))
            first_clear = next((s for s in stops if s >= stop), None)
            if first_clear is not None and first_clear < end_ms:
                clear_lat.append(float(first_clear - stop))
    return Accuracy(truth_ms, shown_ms, phantom_ms, missed_ms, set_lat, clear_lat)
