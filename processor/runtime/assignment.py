"""How long a member of a consumer group has waited for the group to assign it partitions,
and the lines that say so once that is well past a rebalance.

A group that never completes its rebalance (a member that does not rejoin, a coordinator
that keeps the group forming) leaves every member with no partitions and nothing in any
log: the client logs its join and sync loop at DEBUG only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# A healthy rebalance ends within the rebalance timeout, which bounds how long the group
# waits for its members to revoke and rejoin (`run`'s REBALANCE_TIMEOUT_MS, 12 s; the
# client's default, the session timeout's 10 s, for the CRM webhook worker), plus the
# coordinator's initial delay (3 s by default) and the join and sync round trips: under
# 20 s. A minute is well past any healthy one, a rolling update's included.
UNASSIGNED_WARN_S = 60.0
# While it lasts, the warning is repeated no more often than this.
UNASSIGNED_REPEAT_S = 60.0
# How often `AssignmentWait.watch` looks at the wait while a fetch waits: the client's
# fetch waits for the group's rebalance to end, for as long as that lasts.
ASSIGNMENT_CHECK_S = 1.0
MEANING = (
    "this member processes nothing until the group completes a rebalance: a member that"
    " does not rejoin, or the group coordinator"
)


class AssignmentWait:
    """Since when a member has had no assignment completed: from its subscription, and from
    each revocation to the next assignment (an empty one included: the group completed a
    rebalance). `check` logs a WARNING once that lasts `warn_after_s`, again every
    `repeat_s` while it lasts; `assigned` logs at INFO when an assignment ends a wait
    that was warned of."""

    def __init__(
        self,
        group_id: str,
        monotonic: Callable[[], float],
        *,
        warn_after_s: float = UNASSIGNED_WARN_S,
        repeat_s: float = UNASSIGNED_REPEAT_S,
    ) -> None:
        self.group_id = group_id
        self.warn_after_s = warn_after_s
        self._monotonic = monotonic
        self._repeat_s = repeat_s
        self._since: float | None = None
        self._warned_at: float | None = None

    def waiting(self) -> None:
        """The member is (re)joining: no assignment until the group completes a rebalance.
        A wait under way goes on from where it began."""
        if self._since is None:
            self._since = self._monotonic()
            self._warned_at = None

    def assigned(self) -> None:
        """The group completed a rebalance and gave the member its assignment."""
        since = self._since
        if since is not None and self._warned_at is not None:
            log.info(
                "partitions assigned in group %s after %.0f s without an assignment",
                self.group_id,
                self._monotonic() - since,
            )
        self.stopped()

    def stopped(self) -> None:
        """The member left the group: it waits for nothing any more."""
        self._since = None
        self._warned_at = None

    def seconds(self) -> float | None:
        """How long the member has waited for an assignment, or None when it is not waiting."""
        since = self._since
        return None if since is None else self._monotonic() - since

    def check(self) -> None:
        """Log the WARNING when the wait has lasted `warn_after_s`, and at most every
        `repeat_s` after that while it lasts."""
        since = self._since
        if since is None:
            return
        now = self._monotonic()
        if now - since < self.warn_after_s:
            return
        if self._warned_at is not None and now - self._warned_at < self._repeat_s:
            return
        self._warned_at = now
        log.warning(
            "no partitions assigned in group %s for %.0f s: %s",
            self.group_id,
            now - since,
            MEANING,
        )

    async def watch(self, *futures: asyncio.Future[Any]) -> None:
        """Return once one of `futures` (a fetch, say) is done; `check` every
        `ASSIGNMENT_CHECK_S` meanwhile, and once it is."""
        while not any(future.done() for future in futures):
            await asyncio.wait(
                futures, timeout=ASSIGNMENT_CHECK_S, return_when=asyncio.FIRST_COMPLETED
            )
            self.check()

    def reason(self) -> str | None:
        """Why the member has no partitions, with how long (the `/readyz` reason), while it
        waits; past `warn_after_s`, what that means."""
        seconds = self.seconds()
        if seconds is None:
            return None
        if seconds < self.warn_after_s:
            return (
                f"no partitions assigned yet: group {self.group_id} rebalancing for {seconds:.1f} s"
            )
        return f"no partitions assigned in group {self.group_id} for {seconds:.0f} s: {MEANING}"
