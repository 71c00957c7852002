"""One input partition: its store, its processing loop, its commit position.

Everything that touches a partition's `PartitionStore` runs in this worker's task, so the
store stays a plain synchronous object. The loop wakes for input records, sink results,
free reconciler capacity, or the store's next timer, whichever comes first (the
processor/punctuator split of Kafka Streams, on one queue).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError

from processor.clock import Clock
from processor.codec import decode_event, iso_utc
from processor.domain import SinkResult
from processor.models import AuditRecord, CrmSyncRecord, DeadLetter
from processor.state import PartitionStore, Work

from .outbound import Outbound
from .reconciler import Reconciler
from .restore import RestoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Records:
    records: list[ConsumerRecord[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class _Result:
    work: Work
    result: SinkResult


@dataclass(frozen=True, slots=True)
class _Wake:
    pass


@dataclass(frozen=True, slots=True)
class _Stop:
    pass


_Item = _Records | _Result | _Wake | _Stop


@dataclass(slots=True)
class Counters:
    """What the processor did, summed over partitions (the demo's summary reads these)."""

    events: int = 0
    dead_letters: int = 0
    crm_records: int = 0
    audit_records: int = 0
    changelog_records: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)


class PartitionWorker:
    """Drives one `PartitionStore` from input records, sink results and time.

    The worker exists from the moment its partition is assigned: input that arrives while
    `load` restores the store from the changelog waits in the queue (I6: restore first).
    """

    def __init__(
        self,
        topic: str,
        partition: int,
        load: Callable[[], Awaitable[PartitionStore]],
        outbound: Outbound,
        reconciler: Reconciler,
        clock: Clock,
        counters: Counters,
        on_applied: Callable[[str, int], None] | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.store: PartitionStore  # set by the loop once restored
        self.restored = asyncio.Event()
        self._load = load
        self.counters = counters
        self._outbound = outbound
        self._reconciler = reconciler
        self._clock = clock
        self._on_applied = on_applied
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.committable: int | None = None
        self._closing = False
        self._in_flight = 0
        self._wake_queued = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._unsubscribe = reconciler.on_capacity(self._wake)
        self._task = asyncio.create_task(self._loop(), name=f"partition-{topic}-{partition}")

    def submit(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Queue input records (in offset order) for processing."""
        self._queue.put_nowait(_Records(records))

    @property
    def backlog(self) -> int:
        """Items waiting in the queue (for back-pressure)."""
        return self._queue.qsize()

    def _wake(self) -> None:
        # Coalesce: one pending wake is enough however many calls finished meanwhile.
        if not self._closing and not self._wake_queued:
            self._wake_queued = True
            self._queue.put_nowait(_Wake())

    async def _loop(self) -> None:
        for attempt in itertools.count():
            try:
                self.store = await self._load()
                break
            except (RestoreError, KafkaError) as exc:
                delay = min(30.0, 0.5 * 2**attempt)
                log.warning(
                    "partition %s: restore failed (%s); retry in %.1fs", self.partition, exc, delay
                )
                await asyncio.sleep(delay)
        self.restored.set()
        while True:
            item = await self._next_item()
            if isinstance(item, _Stop):
                return
            if isinstance(item, _Wake):
                self._wake_queued = False
            try:
                await self._handle(item)
            except asyncio.CancelledError:
                raise
            except Exception:
                # One bad turn must not kill the partition: log, keep state, go on.
                log.exception("partition %s: processing failed", self.partition)

    async def _next_item(self) -> _Item:
        wakeup = self.store.next_wakeup_ms()
        if wakeup is None:
            return await self._queue.get()
        delay_s = max(0.0, (wakeup - self._clock.now_ms()) / 1000)
        try:
            async with asyncio.timeout(delay_s):
                return await self._queue.get()
        except TimeoutError:
            return _Wake()

    async def _handle(self, item: _Item) -> None:
        futures: list[asyncio.Future[Any]] = []
        batch_end: int | None = None
        if isinstance(item, _Records):
            for record in item.records:
                futures.extend(await self._process(record))
                batch_end = record.offset + 1
        elif isinstance(item, _Result):
            self.store.on_result(item.work, item.result)
        self.store.on_tick()
        self._dispatch()
        futures.extend(await self._publish())
        if futures:
            await asyncio.gather(*futures)
        if batch_end is not None:
            # I6: only now, with the changelog acknowledged, may the input offset move.
            self.committable = batch_end

    async def _process(self, record: ConsumerRecord[bytes, bytes]) -> list[asyncio.Future[Any]]:
        decoded = decode_event(
            record.key,
            record.value,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            now_ms=self._clock.now_ms(),
        )
        if isinstance(decoded, DeadLetter):
            self.counters.dead_letters += 1
            log.warning(
                "dead letter at %s[%s]@%s: %s",
                record.topic,
                record.partition,
                record.offset,
                decoded.reason.value,
            )
            return [await self._outbound.dead_letter(record.key, decoded)]
        self.counters.events += 1
        self.store.on_event(decoded, record.offset)
        return []

    def _dispatch(self) -> None:
        if self._closing:
            return
        slots = self._reconciler.free_slots
        if slots <= 0:
            return
        for work in self.store.take_work(slots):
            self._in_flight += 1
            self._idle.clear()
            self.counters.calls[work.kind.value] += 1
            self._reconciler.launch(
                work.session_id, work.desired, functools.partial(self._deliver, work)
            )

    def _deliver(self, work: Work, result: SinkResult) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()
        self._queue.put_nowait(_Result(work, result))

    async def _publish(self) -> list[asyncio.Future[Any]]:
        emitted = self.store.drain()
        futures: list[asyncio.Future[Any]] = []
        now = self._clock.now_ms()
        for change in emitted.changes:
            record = CrmSyncRecord(
                timestamp=change.applied_at,
                session_id=change.session_id,
                status=change.status,
                event_id=change.event_id,
                version=change.version,
                reason=change.reason,
                expires_at=change.expires_at,
            )
            futures.append(await self._outbound.crm(record))
            self.counters.crm_records += 1
            if self._on_applied is not None:
                self._on_applied(change.session_id, change.applied_at)
        for decision in emitted.audits:
            audit = AuditRecord(
                timestamp=iso_utc(now),
                session_id=decision.session_id,
                indicator_status=decision.indicator_status,
                result=decision.result,
                latency_ms=decision.latency_ms,
                error=decision.error,
                event_id=decision.event_id,
                http_status=decision.http_status,
                attempts=decision.attempts,
                partition=self.partition,
                offset=decision.offset,
            )
            futures.append(await self._outbound.audit(audit))
            self.counters.audit_records += 1
            self.counters.decisions[decision.result.value] += 1
        for key, value in emitted.changelog:
            futures.append(await self._outbound.changelog(self.partition, key, value))
            self.counters.changelog_records += 1
        return futures

    async def close(self, grace_s: float) -> int | None:
        """Stop dispatching, let in-flight calls land (up to `grace_s`), flush the
        changelog, and return the input offset that is safe to commit."""
        self._closing = True
        self._unsubscribe()
        if not self.restored.is_set():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            return None
        try:
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
        except TimeoutError:
            log.warning(
                "partition %s: %d calls still in flight after %.1fs; the next owner resumes them",
                self.partition,
                self._in_flight,
                grace_s,
            )
        self._queue.put_nowait(_Stop())
        await self._task
        return self.committable
