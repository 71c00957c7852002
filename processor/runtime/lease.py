"""Calls go out only while the group has recently confirmed this member.

The group gives a member's partitions to another once it has not heard from the member for
its session timeout. A process that stood still (CPU throttling, a VM pause, SIGSTOP) or was
cut off from the cluster for that long has lost them, but it does not know yet: woken or
reconnected, it still believes what it knew, its timers fire, and a refresh or a set of an
indicator the new owner has cleared would go out (a 412's re-read would even re-apply it,
and the new owner, whose store says cleared, would leave it shown).

An offset commit the coordinator accepts proves the membership: it refuses one from a member
it dropped or of a generation that is over. So each accepted commit renews a lease, and the
scheduler sends nothing once the lease is older than the session timeout less a margin: while
it holds, the group cannot have moved the partitions on. The service commits at least every
`renew_every_s` to keep it fresh. A lapsed lease holds calls until the next commit, which
either confirms the membership (the calls go) or is refused (the partitions are fenced until
the rebalance revokes them). The same holds for what it writes: a lapsed member produces
nothing (its state could land after the new owner's and be what the next restore reads,
its CRM records could give a version the new owner gives to another change) and fetches
no input until a commit confirms it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class MembershipLease:
    """How long ago the group last accepted this member's commit, and what that allows.

    `term_s`: how long after the commit's request went out calls may still be made (less
    than the session timeout: the last heartbeat may have come before the commit).
    `renew_every_s`: how often the service should commit to renew it, and how long it waits
    after a commit that failed before trying again.
    """

    def __init__(
        self,
        term_s: float,
        renew_every_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < renew_every_s < term_s:
            raise ValueError("renew_every_s must be positive and shorter than term_s")
        self._term_s = term_s
        self._renew_every_s = renew_every_s
        self._now = monotonic
        self._proven_at = -math.inf
        self._tried_at = -math.inf
        self._lapse_seen = False
        self.lapses = 0
        """Times calls found the lease lapsed after it had held (stalls, lost contact)."""

    @property
    def proven_at(self) -> float:
        """When the request of the last commit the group accepted went out (-inf: none)."""
        return self._proven_at

    def now(self) -> float:
        """The lease's clock: a commit's request time, for `renewed`."""
        return self._now()

    def left(self) -> float:
        """Seconds calls may still be made (0: none until the next accepted commit)."""
        left = self._proven_at + self._term_s - self._now()
        if left > 0:
            return left
        if not self._lapse_seen and self._proven_at > -math.inf:
            self._lapse_seen = True
            self.lapses += 1
            log.warning(
                "the group has not confirmed this member for %.1f s (the process stood still,"
                " or the cluster is out of reach): no calls until it does",
                self._now() - self._proven_at,
            )
        return 0.0

    def renewal_due(self) -> bool:
        """True when the service should commit to renew the lease now."""
        now = self._now()
        return (
            now - self._proven_at >= self._renew_every_s
            and now - self._tried_at >= self._renew_every_s
        )

    def tried(self, at: float) -> None:
        """A commit whose request went out at `at` got no answer from the group."""
        self._tried_at = max(self._tried_at, at)

    def renewed(self, at: float) -> bool:
        """The group accepted a commit whose request went out at `at`; True when calls
        were held until now (they may go)."""
        if at <= self._proven_at:
            return False
        now = self._now()
        held = self._proven_at + self._term_s <= now
        self._proven_at = at
        self._tried_at = max(self._tried_at, at)
        if at + self._term_s <= now:
            # answered later than the term after its request: it proves the membership
            # only until a moment already past, so calls stay held (the same lapse)
            return False
        if self._lapse_seen:
            log.info("the group confirmed this member again: calls resume")
            self._lapse_seen = False
        return held

    def forget(self) -> None:
        """No partition is owned any more: the next ones start from a fresh proof, and
        the wait for it is no lapse."""
        self._proven_at = -math.inf
        self._lapse_seen = False
