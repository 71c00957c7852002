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
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError
from opentelemetry import context as otel_context
from opentelemetry.trace import Span, set_span_in_context

from processor.clock import Clock
from processor.codec import decode_event, iso_utc
from processor.domain import Decision, SinkResult
from processor.models import DeadLetter, TypingEvent
from processor.state import PartitionStore, Work
from processor.telemetry.tracing import DECISION, SESSION_ID, STATUS, PartitionTracing

from .outbound import Outbound
from .reconciler import Reconciler
from .records import audit_record, crm_record
from .restore import RestoreError

log = logging.getLogger(__name__)

# Turns whose records may await acknowledgement at once before the worker waits.
MAX_UNACKED = 32


@dataclass(frozen=True, slots=True)
class _Records:
    records: list[ConsumerRecord[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class _Result:
    work: Work
    result: SinkResult
    span: Span | None = None


@dataclass(frozen=True, slots=True)
class _Wake:
    pass


@dataclass(frozen=True, slots=True)
class _Stop:
    pass


_Item = _Records | _Result | _Wake | _Stop

# Decisions that mean a change reached Genesys (end-to-end latency is measured for them).
_APPLIED = frozenset({Decision.APPLIED, Decision.CLEARED, Decision.EXPIRED})


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
        tracing: PartitionTracing | None = None,
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
        self._tracing = tracing
        # Processing spans of events whose decision is still open, by input offset, with
        # the event's occurred_at (for the end-to-end latency). At most one per session
        # (latest wins) plus the batch in hand.
        self._spans: dict[int, tuple[Span, int]] = {}
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.committable: int | None = None
        # offset of the first record received before any was processed (for the lag gauge)
        self.first_offset: int | None = None
        self.failed: BaseException | None = None
        self._unacked: deque[tuple[asyncio.Future[Any], int | None]] = deque()
        self._closing = False
        self._in_flight = 0
        self._wake_queued = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._unsubscribe = reconciler.on_capacity(self._wake)
        self._task = asyncio.create_task(self._loop(), name=f"partition-{topic}-{partition}")

    def submit(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Queue input records (in offset order) for processing."""
        if self.first_offset is None and records:
            self.first_offset = records[0].offset
        self._queue.put_nowait(_Records(records))

    @property
    def position(self) -> int | None:
        """Offset of the next record to process, when known (for the lag gauge)."""
        return self.committable if self.committable is not None else self.first_offset

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
        turn_span: Span | None = None
        if isinstance(item, _Records):
            for record in item.records:
                futures.extend(await self._process(record))
                batch_end = record.offset + 1
        elif isinstance(item, _Result):
            self.store.on_result(item.work, item.result)
            turn_span = item.span
        self.store.on_tick()
        self._dispatch()
        futures.extend(await self._publish(turn_span))
        self._outbound.flush_audit_file()
        if futures or batch_end is not None:
            await self._track_acks(futures, batch_end)

    async def _track_acks(self, futures: list[asyncio.Future[Any]], batch_end: int | None) -> None:
        """Let acknowledgements arrive in the background; the commit position follows them.

        Waiting for each batch's acks before the next would stall on every broker round
        trip; instead at most `MAX_UNACKED` turns are outstanding, in order.
        """
        acked: asyncio.Future[Any] = asyncio.gather(*futures)
        self._unacked.append((acked, batch_end))
        acked.add_done_callback(self._advance)
        if len(self._unacked) > MAX_UNACKED:
            await asyncio.wait({self._unacked[0][0]})

    def _advance(self, _: asyncio.Future[Any]) -> None:
        while self._unacked and self._unacked[0][0].done():
            acked, batch_end = self._unacked.popleft()
            error = None if acked.cancelled() else acked.exception()
            if acked.cancelled() or error is not None:
                # Not acknowledged: the offset must not move past it (I6). The service sees
                # `failed` and restarts from the last commit.
                self.failed = error or asyncio.CancelledError()
                self._unacked.clear()
                return
            if batch_end is not None:
                # I6: only now, with the changelog acknowledged, may the input offset move.
                self.committable = batch_end

    async def flush(self) -> None:
        """Wait until everything published so far is acknowledged (or failed)."""
        pending = [acked for acked, _ in self._unacked]
        if pending:
            await asyncio.wait(pending)

    async def _process(self, record: ConsumerRecord[bytes, bytes]) -> list[asyncio.Future[Any]]:
        tracing = self._tracing
        started_ns = 0 if tracing is None else time.time_ns()
        decoded = decode_event(
            record.key,
            record.value,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            now_ms=self._clock.now_ms(),
        )
        if isinstance(decoded, DeadLetter):
            span = None
            if tracing is not None:
                attributes = {DECISION: "dead_letter", "typing.dlq.reason": decoded.reason.value}
                span = tracing.start_event(record.headers, record.offset, started_ns, attributes)
            return [await self._dead_letter(record, decoded, span)]
        self.counters.events += 1
        if tracing is not None:
            self._trace_event(tracing, record, decoded, started_ns)
        self.store.on_event(decoded, record.offset)
        return []

    def _trace_event(
        self,
        tracing: PartitionTracing,
        record: ConsumerRecord[bytes, bytes],
        event: TypingEvent,
        started_ns: int,
    ) -> None:
        attributes = {SESSION_ID: event.session_id, STATUS: event.status.value}
        span = tracing.start_event(record.headers, record.offset, started_ns, attributes)
        self._spans[record.offset] = (span, event.occurred_at)

    async def _dead_letter(
        self, record: ConsumerRecord[bytes, bytes], letter: DeadLetter, span: Span | None
    ) -> asyncio.Future[Any]:
        self.counters.dead_letters += 1
        token = None if span is None else otel_context.attach(set_span_in_context(span))
        try:
            log.warning(
                "dead letter at %s[%s]@%s: %s",
                record.topic,
                record.partition,
                record.offset,
                letter.reason.value,
            )
        finally:
            if token is not None:
                otel_context.detach(token)
        if span is None or self._tracing is None:
            return await self._outbound.dead_letter(record.key, letter)
        publish, headers = self._tracing.start_publish("dlq", span)
        try:
            ack = await self._outbound.dead_letter(record.key, letter, headers)
        finally:
            span.end()
        self._tracing.end_on_ack(publish, ack)
        return ack

    def _dispatch(self) -> None:
        if self._closing:
            return
        slots = self._reconciler.free_slots
        if slots <= 0:
            return
        tracing = self._tracing
        for work in self.store.take_work(slots, self._reconciler.free_set_slots):
            self._in_flight += 1
            self._idle.clear()
            self.counters.calls[work.kind.value] += 1
            if tracing is None:
                self._reconciler.launch(
                    work.session_id, work.desired, functools.partial(self._deliver, work, None)
                )
                continue
            cause = None if work.offset is None else self._spans.get(work.offset)
            span, context = tracing.start_apply(
                None if cause is None else cause[0], work.session_id, work.kind.value, work.version
            )
            # the call's task copies the current context: its HTTP spans become children
            token = otel_context.attach(context)
            try:
                self._reconciler.launch(
                    work.session_id, work.desired, functools.partial(self._deliver, work, span)
                )
            finally:
                otel_context.detach(token)

    def _deliver(self, work: Work, span: Span | None, result: SinkResult) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()
        if span is not None:
            PartitionTracing.end_apply(
                span, result.outcome.value, result.http_status, result.attempts, result.error
            )
        self._queue.put_nowait(_Result(work, result, span))

    async def _publish(self, turn_span: Span | None = None) -> list[asyncio.Future[Any]]:
        if self._tracing is not None:
            return await self._publish_traced(turn_span)
        emitted = self.store.drain()
        futures: list[asyncio.Future[Any]] = []
        now = self._clock.now_ms()
        for change in emitted.changes:
            record = crm_record(change)
            futures.append(await self._outbound.crm(record))
            self.counters.crm_records += 1
            if self._on_applied is not None:
                self._on_applied(change.session_id, change.applied_at)
        stamp = iso_utc(now)
        for decision in emitted.audits:
            audit = audit_record(decision, self.partition, stamp)
            futures.append(await self._outbound.audit(audit))
            self.counters.audit_records += 1
            self.counters.decisions[decision.result.value] += 1
        for key, value in emitted.changelog:
            futures.append(await self._outbound.changelog(self.partition, key, value))
            self.counters.changelog_records += 1
        return futures

    async def _publish_traced(self, turn_span: Span | None) -> list[asyncio.Future[Any]]:
        """`_publish` with spans: each record's headers carry its trace; decided events'
        spans end. Changes come from the call result of this turn (`turn_span`); an audit
        belongs to the event at its offset, or else to this turn's call."""
        tracing = self._tracing
        assert tracing is not None
        emitted = self.store.drain()
        futures: list[asyncio.Future[Any]] = []
        now = self._clock.now_ms()
        decided: list[Span] = []
        for change in emitted.changes:
            record = crm_record(change)
            if turn_span is None:
                futures.append(await self._outbound.crm(record))
            else:
                publish, headers = tracing.start_publish("crm", turn_span)
                ack = await self._outbound.crm(record, headers)
                tracing.end_on_ack(publish, ack)
                futures.append(ack)
            self.counters.crm_records += 1
            if self._on_applied is not None:
                self._on_applied(change.session_id, change.applied_at)
        spans = self._spans
        stamp = iso_utc(now)
        for decision in emitted.audits:
            parent = turn_span
            if decision.offset is not None and (cause := spans.pop(decision.offset, None)):
                parent = cause[0]
                parent.set_attribute(DECISION, decision.result.value)
                decided.append(parent)
                if decision.result in _APPLIED and decision.http_status is not None:
                    tracing.end_to_end.record(
                        max(0, now - cause[1]) / 1000, {"decision": decision.result.value}
                    )
            trace_id = None if parent is None else tracing.trace_id(parent)
            audit = audit_record(decision, self.partition, stamp, trace_id)
            carried = None if parent is None else tracing.headers(parent)
            futures.append(await self._outbound.audit(audit, carried))
            self.counters.audit_records += 1
            self.counters.decisions[decision.result.value] += 1
        for key, value in emitted.changelog:
            futures.append(await self._outbound.changelog(self.partition, key, value))
            self.counters.changelog_records += 1
        for span in decided:
            span.end()
        return futures

    def _end_open_spans(self) -> None:
        """Events still undecided when the partition goes: their spans say so."""
        for span, _ in self._spans.values():
            span.set_attribute(DECISION, "unresolved")
            span.end()
        self._spans.clear()

    async def close(self, grace_s: float) -> int | None:
        """Stop dispatching, let in-flight calls land (up to `grace_s`), flush the
        changelog, and return the input offset that is safe to commit."""
        self._closing = True
        self._unsubscribe()
        if not self.restored.is_set():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._end_open_spans()
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
        self._end_open_spans()
        await self.flush()
        return self.committable
