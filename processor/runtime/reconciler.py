"""Runs Genesys calls with bounded total concurrency; one call at a time per session.

The per-session rule is the store's (it never hands out work for a session with a call
out); this class bounds the total, waits for a call's intent to be on the changelog
before sending it (I6), and picks the endpoint the work's target needs.

A call holds its slot from the moment its work is handed to a partition worker
(`reserve`), not only once the worker launches it: the worker launches at its next flush,
after the intent's produce, and a round planned in between must not hand out that slot
again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from processor.budget import ApiBudget
from processor.domain import (
    AgentTypingTarget,
    Indicator,
    OpenMessagingTarget,
    Outcome,
    SinkResult,
)
from processor.state import Work, WorkKind

log = logging.getLogger(__name__)


class Sink(Protocol):
    """What the reconciler needs of the Genesys sink (`processor.sink.GenesysSink`).

    `prepaid`: budget tokens the scheduler already spent for this call's requests.
    """

    @property
    def budget(self) -> ApiBudget:
        """The OAuth client's budget (this replica's share)."""
        ...

    def hold_while(self, held: Callable[[], bool]) -> None:
        """Send no request while `held()` says so (see `GenesysSink.hold_while`)."""
        ...

    def cached_etag(self, session_id: str) -> str | None:
        """The ETag the next PATCH of this session would send, if any."""
        ...

    def forget(self, session_id: str) -> None:
        """Drop what is cached about a session."""
        ...

    async def apply(
        self,
        session_id: str,
        desired: Indicator | None,
        *,
        version: int | None = None,
        prepaid: int = 0,
    ) -> SinkResult:
        """Make the webchat session's indicator `desired` (None = clear), as change
        `version` (`overtaken` when the session shows that version or a later one)."""
        ...

    async def read_back(self, session_id: str, *, prepaid: int = 0) -> SinkResult:
        """Read the webchat session's indicator (`remote_indicator`, `remote_state`)."""
        ...

    async def agent_typing(
        self,
        conversation_id: str,
        communication_id: str,
        duration_ms: int,
        *,
        until_ms: int | None = None,
        prepaid: int = 0,
    ) -> SinkResult:
        """Show agent typing to the customer for `duration_ms`, not past `until_ms`."""
        ...

    async def open_messaging_typing(
        self,
        integration_id: str,
        from_id: str,
        from_id_type: str,
        nickname: str | None,
        duration_ms: int,
        *,
        until_ms: int | None = None,
        prepaid: int = 0,
    ) -> SinkResult:
        """Show customer typing to the agent for `duration_ms`, not past `until_ms`."""
        ...


Deliver = Callable[[SinkResult], None]
_NOT_RECORDED = SinkResult(
    Outcome.FAILED, error="not sent: its intent was not acknowledged on the changelog"
)


class Reconciler:
    """Bounded pool of in-flight Genesys calls shared by every partition of a process."""

    def __init__(self, sink: Sink, max_in_flight: int) -> None:
        self.sink = sink
        self._capacity = max_in_flight
        # Sets must not take every slot: a clear could then not go out (I1).
        self._set_capacity = max(1, max_in_flight - max(1, max_in_flight // 4))
        self._tasks: set[asyncio.Task[None]] = set()
        self._sets: set[asyncio.Task[None]] = set()
        # prepaid tokens of calls whose task has not taken its first step: a task cancelled
        # then runs none of its code, so `_finished` refunds them
        self._unstarted: dict[asyncio.Task[None], int] = {}
        # work handed to a worker and not launched yet, by identity (see the module docstring)
        self._reserved: dict[int, Work] = {}
        self._listeners: list[Callable[[], None]] = []

    @property
    def in_flight(self) -> int:
        """Calls running now."""
        return len(self._tasks)

    @property
    def reserved(self) -> int:
        """Calls handed to a worker and not launched yet."""
        return len(self._reserved)

    @property
    def free_slots(self) -> int:
        """How many more calls may start now (reserved ones count as started)."""
        return max(0, self._capacity - len(self._tasks) - len(self._reserved))

    @property
    def free_set_slots(self) -> int:
        """How many more sets or refreshes may start now (the rest is kept for clears)."""
        # (a few dozen reserved at most: counted when asked, not kept beside them)
        sets = len(self._sets) + sum(1 for work in self._reserved.values() if _is_set(work))
        return max(0, min(self.free_slots, self._set_capacity - sets))

    def on_capacity(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` whenever a slot frees (a call finishes, a reserved one is
        released); returns a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def forget(self, session_ids: Iterable[str]) -> None:
        """Drop what the sink caches about these sessions (their partition moved away)."""
        for session_id in session_ids:
            self.sink.forget(session_id)

    def reserve(self, work: Work) -> None:
        """Hold a slot for `work`, handed to a worker that launches it later: until
        `launch` starts it or `release` gives it back, it counts as a call in flight."""
        self._reserved[id(work)] = work

    def release(self, work: Work) -> None:
        """`work` reserved will not be launched (dropped): its slot is free again."""
        if self._reserved.pop(id(work), None) is not None:
            self._notify()

    def launch(
        self, work: Work, prepaid: int, recorded: Awaitable[object], deliver: Deliver
    ) -> asyncio.Task[None]:
        """Start one call once `recorded` (its intent's changelog ack) completes, in the
        slot reserved for `work` if one was; `deliver` receives its result on the event
        loop (not when the call is cancelled)."""
        self._reserved.pop(id(work), None)
        task = asyncio.create_task(self._run(work, prepaid, recorded, deliver))
        self._tasks.add(task)
        if prepaid:
            self._unstarted[task] = prepaid
        if _is_set(work):
            self._sets.add(task)
        task.add_done_callback(self._finished)
        return task

    async def _run(
        self, work: Work, prepaid: int, recorded: Awaitable[object], deliver: Deliver
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._unstarted.pop(task, None)  # from here on, this call refunds or spends them
        try:
            # shielded: the acknowledgement is the flush's too, which a cancelled call
            # must not cancel for the rest of it
            await asyncio.shield(recorded)
        except asyncio.CancelledError:
            self.sink.budget.refund(prepaid)  # never sent
            raise
        except Exception:  # the worker sees the failed ack too, and stops committing
            self.sink.budget.refund(prepaid)
            deliver(_NOT_RECORDED)
            return
        try:
            result = await self._call(work, prepaid)
        except Exception as exc:
            # a bug, not an answer: the call may have gone out, so its outcome is unknown
            log.exception("sink call crashed")
            result = SinkResult(
                Outcome.FAILED, error=f"crashed: {type(exc).__name__}", ambiguous=True
            )
        deliver(result)

    async def _call(self, work: Work, prepaid: int) -> SinkResult:
        sink = self.sink
        if work.kind is WorkKind.RESOLVE:
            return await sink.read_back(work.session_id, prepaid=prepaid)
        target = work.target
        if target is None:
            return await sink.apply(
                work.session_id, work.desired, version=work.version, prepaid=prepaid
            )
        # each request carries what is left until the deadline when it goes out, at most
        # the work's duration and at least the shortest (the result says until when the
        # one that landed shows), and none goes out after it
        until = work.deadline_ms or (None if work.desired is None else work.desired.expires_at)
        if isinstance(target, AgentTypingTarget):
            return await sink.agent_typing(
                target.conversation_id,
                target.communication_id,
                work.duration_ms,
                until_ms=until,
                prepaid=prepaid,
            )
        assert isinstance(target, OpenMessagingTarget)
        return await sink.open_messaging_typing(
            target.integration_id,
            target.from_id,
            target.from_id_type,
            target.nickname,
            work.duration_ms,
            until_ms=until,
            prepaid=prepaid,
        )

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._sets.discard(task)
        unsent = self._unstarted.pop(task, 0)
        if unsent:
            self.sink.budget.refund(unsent)  # cancelled before its first step: never sent
        self._notify()

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is in flight or the timeout passes; True when idle."""
        if not self._tasks:
            return True
        await asyncio.wait(set(self._tasks), timeout=timeout_s)
        return not self._tasks

    async def aclose(self) -> None:
        """Cancel whatever still runs (shutdown after the grace period)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _is_set(work: Work) -> bool:
    """Sets and refreshes may not take the slots kept for clears."""
    return work.kind is WorkKind.SET or work.kind is WorkKind.REFRESH
