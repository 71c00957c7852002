"""Half-open millisecond intervals: merging, subtracting, measuring."""

from __future__ import annotations

from collections.abc import Iterable

Interval = tuple[int, int]


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint union of `intervals`; empty ones dropped."""
    merged: list[Interval] = []
    for start, stop in sorted(intervals):
        if stop <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


def subtract(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """Parts of the sorted, disjoint intervals `a` not covered by the sorted, disjoint `b`."""
    out: list[Interval] = []
    j = 0
    for start, stop in a:
        cursor = start
        while j < len(b) and b[j][1] <= cursor:
            j += 1
        k = j
        while k < len(b) and b[k][0] < stop:
            if b[k][0] > cursor:
                out.append((cursor, b[k][0]))
            cursor = max(cursor, b[k][1])
            k += 1
        if cursor < stop:
            out.append((cursor, stop))
    return out


def clip(intervals: Iterable[Interval], end: int) -> list[Interval]:
    """The parts of `intervals` before `end`; empty ones dropped."""
    return [(start, min(stop, end)) for start, stop in intervals if start < end]


def total(intervals: Iterable[Interval]) -> int:
    """Summed length of disjoint intervals."""
    return sum(stop - start for start, stop in intervals)
