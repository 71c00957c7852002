"""How long typing lasts, learned from the stream: what a set is worth depends on it.

An episode is one stretch of a session's wanted indicator, from the event that asked for
it while none was wanted to its stop or lapse (status changes inside it do not end it):
what users see as one bout of typing. Participants differ (an agent composing an answer
types longer than a customer saying "ok"), and under a tight budget the planner should
spend its sets on the sessions that will go on typing longest. `EpisodeLengths` keeps a
running mean of episode lengths per participant role and over all, and a session carries
its own typical length (`typical`), so that the planner can weigh a set by how long this
participant's typing usually lasts compared with everyone's (`weight`).

Pure and cheap: one update per finished episode, nothing per repeat event. Not persisted:
after a restore it is learned again (a weight of 1 meanwhile, the planner's plain order).
"""

from __future__ import annotations

from processor.domain import Role

MIN_EPISODES = 20
"""Episodes seen before any weight departs from 1 (a few lengths say little)."""
HORIZON = 500
"""The running means weigh the last few hundred episodes (traffic drifts over a day)."""
WEIGHT_RANGE = (0.25, 4.0)
"""A weight never moves a set's value by more than this factor either way."""


class _RunningMean:
    """Mean of the values seen, tending to an exponential mean over `HORIZON` of them."""

    __slots__ = ("count", "mean")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0


class EpisodeLengths:
    """Running means of episode lengths (ms), by the role that began them and over all."""

    def __init__(self) -> None:
        self._all = _RunningMean()
        self._by_role = {role: _RunningMean() for role in Role}

    @property
    def episodes(self) -> int:
        """Episodes recorded so far."""
        return self._all.count

    def mean(self, role: Role | None = None) -> float | None:
        """Mean episode length of `role` (of everyone with None); None until known."""
        stats = self._all if role is None else self._by_role[role]
        return stats.mean if stats.count >= MIN_EPISODES else None

    def record(self, role: Role, length_ms: int, typical_ms: int) -> int:
        """Learn one finished episode of a session whose typical length was `typical_ms`
        (0: none yet); returns the session's typical length from now on.

        A session's typical length halves the distance to each new episode, starting from
        its role's mean: one long episode makes a participant look like a long typist only
        half way, two in a row most of the way.
        """
        if length_ms < 0:
            length_ms = 0
        # (inlined running means: this runs at the end of every episode)
        stats = self._all
        stats.count += 1
        stats.mean += (length_ms - stats.mean) / (stats.count if stats.count < HORIZON else HORIZON)
        stats = self._by_role[role]
        stats.count += 1
        stats.mean += (length_ms - stats.mean) / (stats.count if stats.count < HORIZON else HORIZON)
        if not typical_ms:
            typical_ms = int(stats.mean) if stats.count > MIN_EPISODES else length_ms
        return (typical_ms + length_ms) // 2 or 1

    def weight(self, role: Role | None, typical_ms: int) -> float:
        """How much longer than everyone's a session's typing usually lasts: its typical
        length (else its role's mean) over the mean of all; 1 while little is known."""
        overall = self.mean()
        if not overall:
            return 1.0
        own = typical_ms or (self.mean(role) if role is not None else None) or overall
        low, high = WEIGHT_RANGE
        return min(high, max(low, own / overall))
