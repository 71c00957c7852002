"""How long typing lasts, learned from the stream: what a set is worth depends on it.

A burst is one run of a session's `typing` status, from the event that began it to the
one that paused or stopped it, or to its lapse. Participants differ (an agent composing an
answer types longer than a customer saying "ok"), and under a tight budget the planner
should spend its sets on the sessions that will go on typing longest. `BurstLengths` keeps
a running mean of burst lengths per participant role and over all, and a session carries
its own typical length (`Session.typical`), so that the planner can weigh a set by how long
this participant's typing usually lasts compared with everyone's (`weight`).

Pure and cheap: one update per finished burst, nothing per repeat event. Not persisted:
after a restore it is learned again (a weight of 1 meanwhile, the planner's plain order).
"""

from __future__ import annotations

from processor.domain import Role

MIN_BURSTS = 20
"""Bursts seen before any weight departs from 1 (a few lengths say little)."""
HORIZON = 500
"""The running means weigh the last few hundred bursts (traffic drifts over a day)."""
WEIGHT_RANGE = (0.25, 4.0)
"""A weight never moves a set's value by more than this factor either way."""


class _RunningMean:
    """Mean of the values seen, tending to an exponential mean over `HORIZON` of them."""

    __slots__ = ("count", "mean")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0


class BurstLengths:
    """Running means of burst lengths (ms), by the role that began them and over all."""

    def __init__(self) -> None:
        self._all = _RunningMean()
        self._by_role = {role: _RunningMean() for role in Role}

    @property
    def bursts(self) -> int:
        """Bursts recorded so far."""
        return self._all.count

    def mean(self, role: Role | None = None) -> float | None:
        """Mean burst length of `role` (of everyone with None); None until known."""
        stats = self._all if role is None else self._by_role[role]
        return stats.mean if stats.count >= MIN_BURSTS else None

    def record(self, role: Role, length_ms: int, typical_ms: int) -> int:
        """Learn one finished burst of a session whose typical length was `typical_ms`
        (0: none yet); returns the session's typical length from now on.

        A session's typical length moves a third of the way to each new burst, starting
        from its role's mean: one long burst says little about a participant, several in a
        row say most (a faster pace makes noise of chance among participants alike).
        """
        if length_ms < 0:
            length_ms = 0
        # (inlined running means: this runs at the end of every burst)
        stats = self._all
        stats.count += 1
        stats.mean += (length_ms - stats.mean) / (stats.count if stats.count < HORIZON else HORIZON)
        stats = self._by_role[role]
        stats.count += 1
        stats.mean += (length_ms - stats.mean) / (stats.count if stats.count < HORIZON else HORIZON)
        if not typical_ms:
            typical_ms = int(stats.mean) if stats.count > MIN_BURSTS else length_ms
        return (2 * typical_ms + length_ms) // 3 or 1

    def weight(self, role: Role | None, typical_ms: int) -> float:
        """How much longer than everyone's a session's typing usually lasts: its typical
        length (else its role's mean) over the mean of all; 1 while little is known."""
        overall = self.mean()
        if not overall:
            return 1.0
        own = typical_ms or (self.mean(role) if role is not None else None) or overall
        low, high = WEIGHT_RANGE
        return min(high, max(low, own / overall))
