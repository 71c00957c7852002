"""One input partition: its store, its processing loop, its commit position.

Everything that changes a partition's `PartitionStore` runs in this worker's task (the
scheduler only takes ready work from it, synchronously), so the store stays a plain
synchronous object. The loop wakes for input records, call results, calls to launch, or
the store's next timer, whichever comes first (the processor/punctuator split of Kafka
Streams, on one queue).

Commit protocol (I6). Audit, CRM and dead-letter records of a turn are produced at once;
changelog records are kept in the store (a write cache: one record per changed session)
and flushed every commit interval, and before any call goes out (a call's intent is on
the changelog, acknowledged, before the call is sent). Nothing is written while the group
has not confirmed this member lately (`holding`, see `lease`): a member that stood still
past its session must not write over what the partition's next owner wrote. The input
offset of a flush may be committed once everything produced up to it is acknowledged. A
record whose processing raises goes to the DLQ (`processing_error`) and the partition goes
on; a record that cannot be written stops the partition (`failed`): nothing is ever
skipped.
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
from opentelemetry.trace import Span

from processor.clock import Clock
from processor.codec import check_event, iso_utc
from processor.deadletter import dead_letter_of
from processor.domain import Decision, Outcome, SinkResult
from processor.logs import throttled
from processor.models import DeadLetter, DlqReason, TypingEvent
from processor.state import PartitionStore, Work
from processor.telemetry.tracing import DECISION, SESSION_ID, STATUS, PartitionTracing

from .outbound import Outbound, OutboundBatch
from .reconciler import Reconciler
from .recordbatch import Undecodable
from .records import audit_bytes, crm_bytes
from .restore import RestoreError

log = logging.getLogger(__name__)

# Flushes whose records may await acknowledgement at once before the worker waits.
MAX_UNACKED = 32
_NOT_SENT = SinkResult(Outcome.FAILED, error="not sent: the partition is closing or fenced")


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


@dataclass(frozen=True, slots=True)
class _Passed:
    offset: int


_Item = _Records | Undecodable | _Passed | _Result | _Wake | _Stop

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
    """Drives one `PartitionStore` from input records, call results and time.

    The worker exists from the moment its partition is assigned: input that arrives while
    `load` restores the store from the changelog waits in the queue (I6: restore first).
    A store restored with a replay hold (`PartitionStore.hold_for_replay`) hears after
    each turn how far the input has been processed.
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
        *,
        flush_interval_ms: int = 1000,
        on_ready: Callable[[PartitionWorker], None] | None = None,
        on_queued: Callable[[], None] | None = None,
        on_applied: Callable[[str, int], None] | None = None,
        tracing: PartitionTracing | None = None,
        held: Callable[[], bool] = lambda: False,
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
        self._flush_interval_ms = flush_interval_ms
        self._on_ready = on_ready
        self._on_queued = on_queued
        self._on_applied = on_applied
        self._tracing = tracing
        self._held = held
        # Processing spans of events whose decision is still open, by input offset, with
        # the event's occurred_at (for the end-to-end latency).
        self._spans: dict[int, tuple[Span, int]] = {}
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.committable: int | None = None
        # offset of the first record received before any was processed (for the lag gauge)
        self.first_offset: int | None = None
        # offset after the last record queued (see `resume_at`)
        self._submitted: int | None = None
        self.failed: BaseException | None = None
        # Offset after the last record processed, and acks not yet part of a flush.
        self._processed: int | None = None
        self._flushed_end: int | None = None
        self._pending: list[asyncio.Future[Any]] = []
        self._next_flush = 0
        self._unflushed = False
        self._launches: list[tuple[Work, int]] = []
        self._calls: set[asyncio.Task[None]] = set()
        # acknowledgements of CRM and audit records sent since the last changelog flush
        self._reports: list[asyncio.Future[Any]] = []
        self._unacked: deque[tuple[asyncio.Future[Any], int | None]] = deque()
        self._closing = False
        self._fenced = False
        # batches of records decided and not produced yet (kept while `holding`), in order
        self._unsent: list[OutboundBatch] = []
        self._in_flight = 0
        self._wake_queued = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.create_task(self._loop(), name=f"partition-{topic}-{partition}")

    async def settled(self) -> None:
        """Return once the store is restored, or the worker ended without one (closed
        while restoring)."""
        if self.restored.is_set():
            return
        restored = asyncio.ensure_future(self.restored.wait())
        try:
            await asyncio.wait({restored, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            restored.cancel()

    @property
    def accepting(self) -> bool:
        """True while the scheduler may take work from this partition's store."""
        return (
            self.restored.is_set()
            and not self._closing
            and not self._fenced
            and self.failed is None
        )

    def fence(self) -> None:
        """The group refused this member's commit: another member may own the partition
        now. Launch nothing more (calls taken and not sent go back to the store) until
        the rebalance that follows revokes it."""
        self._fenced = True
        self._drop_launches()

    def _drop_launches(self) -> None:
        launches, self._launches = self._launches, []
        self._drop(launches)

    def _drop(self, launches: list[tuple[Work, int]]) -> None:
        # Calls taken but not launched never go out: their slots and budget come back,
        # the store hears so.
        for work, prepaid in launches:
            self._reconciler.release(work)
            self._reconciler.sink.budget.refund(prepaid)
            self._deliver(work, None, _NOT_SENT)

    def submit(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Queue input records (in offset order) for processing."""
        if not records:
            return
        if self.first_offset is None:
            self.first_offset = records[0].offset
        self._submitted = records[-1].offset + 1
        self._queue.put_nowait(_Records(records))

    def submit_undecodable(self, item: Undecodable) -> None:
        """Queue a dead letter for a record that cannot be handed on as it is (see
        `undecodable`): with its bytes when they could be read, else by its position."""
        if self.first_offset is None:
            self.first_offset = item.offset
        self._submitted = item.offset + 1
        self._queue.put_nowait(item)

    def pass_to(self, offset: int) -> None:
        """The consumer stands at `offset`, past every record queued: the offsets in between
        hold nothing to process (a transaction's marker, an aborted transaction's records,
        records compaction removed). They count as processed once what was queued before
        them is, so `offset` is committed once that is acknowledged (I6); else a partition
        that ends in a marker stays committed one short of its end."""
        if self._submitted is not None and offset <= self._submitted:
            return
        self._submitted = offset
        self._queue.put_nowait(_Passed(offset))

    def resume_at(self) -> int | None:
        """Offset of the first record not queued yet (None before any): where a consumer
        that lost its place goes back to."""
        return self._submitted

    def launch(self, work: Work, prepaid: int) -> None:
        """Send `work` (taken from this store by the scheduler) once its intent is on the
        changelog: the next turn flushes it and starts the call. Its slot is the
        reconciler's from now on, until the call starts or is dropped."""
        self._reconciler.reserve(work)
        self._launches.append((work, prepaid))
        self._in_flight += 1
        self._idle.clear()
        self._wake()

    @property
    def position(self) -> int | None:
        """Offset of the next record to process, when known (for the lag gauge)."""
        return self.committable if self.committable is not None else self.first_offset

    @property
    def backlog(self) -> int:
        """Items waiting in the queue (for back-pressure)."""
        return self._queue.qsize()

    def _wake(self) -> None:
        # Coalesce: one pending wake is enough however many things happened meanwhile.
        if not self._wake_queued:
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
            except Exception as exc:
                # A changelog this release cannot read (a corrupt record, another format):
                # restoring past it would forget shown indicators. Stop and say so (readiness
                # reports it; the service restarts from the last commit).
                log.exception("partition %s: restore failed", self.partition)
                self.failed = _logged(exc)
                return
        self._next_flush = self._clock.now_ms() + self._flush_interval_ms
        self.restored.set()
        if self._on_ready is not None:
            self._on_ready(self)
        while True:
            item = await self._next_item()
            if isinstance(item, _Wake):
                self._wake_queued = False
            try:
                await self._handle(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Never skip: the offset stays where it is and the service restarts from
                # the last commit (input, state and calls are replayed or read back).
                log.exception("partition %s: processing stopped", self.partition)
                self.failed = _logged(exc)
                # no turn launches them now: their slots and budget go to the other partitions
                self._drop_launches()
                return
            if isinstance(item, _Stop):
                return

    async def _next_item(self) -> _Item:
        wakeup = self.store.next_wakeup_ms()
        if self._unflushed and (wakeup is None or self._next_flush < wakeup):
            wakeup = self._next_flush
        if wakeup is None:
            return await self._queue.get()
        delay_s = max(0.0, (wakeup - self._clock.now_ms()) / 1000)
        try:
            async with asyncio.timeout(delay_s):
                return await self._queue.get()
        except TimeoutError:
            return _Wake()

    async def _handle(self, item: _Item) -> None:
        batch = self._outbound.batch()
        turn_span: Span | None = None
        if isinstance(item, _Records):
            for record in item.records:
                self._process(record, batch)
                self._processed = record.offset + 1
        elif isinstance(item, Undecodable):
            record = item.record
            letter = dead_letter_of(
                record, DlqReason.UNDECODABLE_RECORD, item.detail, self._clock.now_ms()
            )
            self._dead_letter(record, letter, batch, time.time_ns())
            self._processed = record.offset + 1
        elif isinstance(item, _Passed):
            self._processed = item.offset
        elif isinstance(item, _Result):
            self.store.on_result(item.work, item.result)
            turn_span = item.span
        if self._processed is not None and self.store.replaying:
            # the input since the last commit is processed again: what it held may go now
            self.store.replayed(self._processed)
        self.store.on_tick()
        if self._on_queued is not None and self.store.queued_work and not self._closing:
            self._on_queued()  # calls taken now are flushed and launched in this turn
        await self._publish(batch, turn_span, flush=isinstance(item, _Stop))

    def _process(self, record: ConsumerRecord[bytes, bytes], batch: OutboundBatch) -> None:
        tracing = self._tracing
        started_ns = 0 if tracing is None else time.time_ns()
        try:
            decoded = check_event(record.key, record.value)
            if not isinstance(decoded, TypingEvent):
                reason, detail = decoded
                letter = dead_letter_of(record, reason, detail, self._clock.now_ms())
                self._dead_letter(record, letter, batch, started_ns)
                return
            span = None
            if tracing is not None:
                attributes = {SESSION_ID: decoded.session_id, STATUS: decoded.status.value}
                span = tracing.start_event(record.headers, record.offset, started_ns, attributes)
                self._spans[record.offset] = (span, decoded.occurred_at)
            self.store.on_event(decoded, record.offset)
            # (after it: an event whose processing raises is counted as its dead letter)
            self.counters.events += 1
        except Exception as exc:
            # A record that breaks processing is set aside, not retried for ever.
            # its traceback once a minute by partition and kind, as its dead letter's line
            log.exception(
                "partition %s: record at offset %s failed",
                record.partition,
                record.offset,
                extra=throttled(record.topic, record.partition, type(exc)),
            )
            letter = dead_letter_of(
                record,
                DlqReason.PROCESSING_ERROR,
                f"{type(exc).__name__}: {exc}",
                self._clock.now_ms(),
            )
            # the event's span, if it was started, ends here as the dead letter's
            started = self._spans.pop(record.offset, None)
            self._dead_letter(record, letter, batch, started_ns, started and started[0])

    def _dead_letter(
        self,
        record: ConsumerRecord[bytes, bytes],
        letter: DeadLetter,
        batch: OutboundBatch,
        started_ns: int,
        span: Span | None = None,
    ) -> None:
        self.counters.dead_letters += 1
        # the first of a partition's letters for a reason, then a count of them a minute:
        # a producer of nothing but bad records does not flood the log (the DLQ has each)
        log.warning(
            "dead letter at %s[%s]@%s: %s",
            record.topic,
            record.partition,
            record.offset,
            letter.reason.value,
            extra=throttled(record.topic, record.partition, letter.reason),
        )
        tracing = self._tracing
        headers = None
        if tracing is not None:
            attributes = {DECISION: "dead_letter", "typing.dlq.reason": letter.reason.value}
            if span is None:
                span = tracing.start_event(record.headers, record.offset, started_ns, attributes)
            else:
                span.set_attributes(attributes)
            publish, headers = tracing.start_publish("dlq", span)
            span.end()
            publish.end()
        batch.dead_letter(letter.record_key(), letter.to_bytes(), headers)

    def _deliver(self, work: Work, span: Span | None, result: SinkResult) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()
        if span is not None:
            PartitionTracing.end_apply(
                span, result.outcome.value, result.http_status, result.attempts, result.error
            )
        self._queue.put_nowait(_Result(work, result, span))

    async def _publish(self, batch: OutboundBatch, turn_span: Span | None, *, flush: bool) -> None:
        """Produce what the turn decided; flush the changelog when its time has come or
        calls wait for their intent to be recorded, then launch those calls.

        The CRM and audit records produced so far are acknowledged before the changelog
        is written: what reports an outcome (a call's result, a lapse or an expiry a timer
        found, in any turn, input turns included) must be on its topic before the changelog
        says the outcome is known, else a crash in between would restore a store with
        nothing left to redo, and the report would be lost for good (I6). (Input replay
        would re-derive an event's own decision, but not a timer's that the same turn
        made.) The wait costs one round trip per flush, most acknowledgements having come
        by then."""
        now = self._clock.now_ms()
        # The calls whose intents this drain takes: one the scheduler takes while the
        # produce below awaits has its intent in the next flush, and goes out after it.
        flush = flush or bool(self._launches) or now >= self._next_flush
        holding = self.holding
        if flush and holding:
            flush = False
            self._next_flush = now + self._flush_interval_ms
        launches: list[tuple[Work, int]] = []
        if flush:
            launches, self._launches = self._launches, []
        emitted = self.store.drain(changelog=flush)
        counters = self.counters
        tracing = self._tracing
        published: list[Span] = []
        for change in emitted.changes:
            headers = None
            if tracing is not None and turn_span is not None:
                publish, headers = tracing.start_publish("crm", turn_span)
                published.append(publish)
            batch.crm(change.session_id.encode(), crm_bytes(change), headers)
            counters.crm_records += 1
            if self._on_applied is not None:
                self._on_applied(change.session_id, change.applied_at)
        stamp = iso_utc(now)
        decided: list[Span] = []
        spans = self._spans
        partition = self.partition
        # by member, named once per turn: an enum's `.value` costs about 0.15 us a read
        tally: Counter[Decision] = Counter()
        for decision in emitted.audits:
            trace_id = None
            headers = None
            if tracing is not None:
                parent = turn_span
                if decision.offset is not None and (cause := spans.pop(decision.offset, None)):
                    parent = cause[0]
                    parent.set_attribute(DECISION, decision.result.value)
                    decided.append(parent)
                    if decision.result in _APPLIED and decision.http_status is not None:
                        tracing.end_to_end.record(
                            max(0, now - cause[1]) / 1000, {"decision": decision.result.value}
                        )
                if parent is not None:
                    trace_id = tracing.trace_id(parent)
                    headers = tracing.headers(parent)
            record = audit_bytes(decision, partition, stamp, trace_id)
            batch.audit(decision.session_id.encode(), record, headers)
            tally[decision.result] += 1
        counters.audit_records += len(emitted.audits)
        for result, count in tally.items():
            counters.decisions[result.value] += count
        state = self._outbound.batch()
        for key, value in emitted.changelog:
            state.changelog(self.partition, key, value)
        counters.changelog_records += len(emitted.changelog)
        try:
            if len(batch):
                self._unsent.append(batch)
            futures = {} if holding else await self._send_unsent()
            typing = self._outbound.typing
            self._reports.extend(futures.get(typing.crm_topic, []))
            self._reports.extend(futures.get(typing.audit_topic, []))
            if len(state):
                reports, self._reports = self._reports, []
                await _acknowledged(reports)
                futures.update(await state.send())
            elif self._reports:
                # no changelog this turn: those acknowledged need no wait (a failed one is
                # kept, for the next changelog write to raise), else turns that change no
                # session would keep one for every turn
                self._reports = [f for f in self._reports if not _acknowledged_now(f)]
        except BaseException:
            if self._fenced or self._closing:
                self._drop(launches)
            else:
                self._launches = launches + self._launches  # not started: closing drops them
            raise
        if self._fenced or self._closing:
            # fenced or closed while the flush was produced: what it took never goes out
            self._drop(launches)
            launches = []
        for span in decided:
            span.end()
        for span in published:
            span.end()
        for topic_futures in futures.values():
            self._pending.extend(topic_futures)
        if futures or self._processed != self._flushed_end:
            self._unflushed = True
        if not flush:
            return
        changelog = futures.get(self._outbound.changelog_topic, [])
        recorded = asyncio.gather(*changelog) if changelog else _done()
        self._start_calls(launches, recorded)
        group = self._pending
        self._pending = []
        self._next_flush = now + self._flush_interval_ms
        self._unflushed = False
        self._flushed_end = self._processed
        await self._track_acks(group, self._processed)

    @property
    def holding(self) -> bool:
        """True while this member writes nothing: the group refused its commit (fenced), or
        has not confirmed it lately (`held`).

        Another member may own the partition already and have restored its store. A
        changelog record written now would come after that owner's, and the next restore
        would read this stale session (a pending change forgotten, a version repeated); a
        CRM record could give a version that owner gives to another change. What the turns
        decide waits: confirmed again, it is written; revoked, it is dropped, and the next
        owner decides it again from the last commit (I6). The service fetches no input for
        a partition meanwhile.
        """
        return self._fenced or self._held()

    async def _send_unsent(self) -> dict[str, list[asyncio.Future[Any]]]:
        """Produce the batches not produced yet, in order (those of this turn, and those
        kept while `holding`); their acknowledgements by topic."""
        futures: dict[str, list[asyncio.Future[Any]]] = {}
        unsent, self._unsent = self._unsent, []
        for batch in unsent:
            for topic, sent in (await batch.send()).items():
                futures.setdefault(topic, []).extend(sent)
        return futures

    def _start_calls(self, launches: list[tuple[Work, int]], recorded: asyncio.Future[Any]) -> None:
        tracing = self._tracing
        for work, prepaid in launches:
            self.counters.calls[work.kind.value] += 1
            if tracing is None:
                self._track(
                    self._reconciler.launch(
                        work, prepaid, recorded, functools.partial(self._deliver, work, None)
                    )
                )
                continue
            cause = None if work.offset is None else self._spans.get(work.offset)
            span, context = tracing.start_apply(
                None if cause is None else cause[0], work.session_id, work.kind.value, work.version
            )
            # the call's task copies the current context: its HTTP spans become children
            token = otel_context.attach(context)
            try:
                self._track(
                    self._reconciler.launch(
                        work, prepaid, recorded, functools.partial(self._deliver, work, span)
                    )
                )
            finally:
                otel_context.detach(token)

    def _track(self, call: asyncio.Task[None]) -> None:
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def _track_acks(self, futures: list[asyncio.Future[Any]], end: int | None) -> None:
        """Let acknowledgements arrive in the background; the commit position follows them.

        Waiting for each flush's acks before the next would stall on every broker round
        trip; instead at most `MAX_UNACKED` flushes are outstanding, in order.
        """
        acked: asyncio.Future[Any] = asyncio.gather(*futures) if futures else _done()
        self._unacked.append((acked, end))
        acked.add_done_callback(self._advance)
        if len(self._unacked) > MAX_UNACKED:
            await asyncio.wait({self._unacked[0][0]})

    def _advance(self, _: asyncio.Future[Any]) -> None:
        if self.failed is not None:
            return  # a flush was lost: no later one may move the offset past it (I6)
        while self._unacked and self._unacked[0][0].done():
            acked, end = self._unacked.popleft()
            error = None if acked.cancelled() else acked.exception()
            if acked.cancelled() or error is not None:
                # Not acknowledged: the offset must not move past it (I6). The service sees
                # `failed` and restarts from the last commit.
                self.failed = error or asyncio.CancelledError()
                self._unacked.clear()
                return
            if end is not None:
                # I6: only now, with everything up to it acknowledged, may the input offset
                # move.
                self.committable = end

    async def flush(self) -> None:
        """Wait until everything flushed so far is acknowledged (or failed)."""
        pending = [acked for acked, _ in self._unacked]
        if pending:
            await asyncio.wait(pending)

    def _end_open_spans(self) -> None:
        """Events still undecided when the partition goes: their spans say so."""
        for span, _ in self._spans.values():
            span.set_attribute(DECISION, "unresolved")
            span.end()
        self._spans.clear()

    async def close(self, grace_s: float) -> int | None:
        """Stop launching, let calls in flight land (up to `grace_s`), flush the
        changelog, drop the sink's cache of these sessions, and return the input offset
        that is safe to commit."""
        self._closing = True
        if not self.restored.is_set():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._end_open_spans()
            return None
        self._drop_launches()
        try:
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
        except TimeoutError:
            # Cancelled, not left running: a call retrying past the grace would write
            # after the next owner has read the session back and acted on it.
            log.warning(
                "partition %s: %d calls still in flight after %.1fs, cancelled; the next owner"
                " reads them back",
                self.partition,
                self._in_flight,
                grace_s,
            )
            calls = list(self._calls)
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        self._queue.put_nowait(_Stop())
        await self._task
        if self._unsent:
            log.warning(
                "partition %s: %d records decided while the group had not confirmed this"
                " member are dropped; its next owner decides them again",
                self.partition,
                sum(len(batch) for batch in self._unsent),
            )
            self._unsent.clear()
        self._end_open_spans()
        await self.flush()
        self._reconciler.forget(self.store.session_ids())
        return self.committable


async def _acknowledged(futures: list[asyncio.Future[Any]]) -> None:
    """Wait for `futures` (producer acknowledgements); raise if one failed."""
    for result in await asyncio.gather(*futures, return_exceptions=True):
        if isinstance(result, BaseException):
            raise KafkaError(f"an outcome report was not acknowledged: {result!r}")


def _acknowledged_now(future: asyncio.Future[Any]) -> bool:
    """True when `future` (a producer acknowledgement) has come, and not as a failure."""
    return future.done() and not future.cancelled() and future.exception() is None


def _logged(exc: Exception) -> Exception:
    """A failure kept once its traceback is logged: without it, whose frames hold the
    worker (a cycle that would keep the worker and its store alive)."""
    return exc.with_traceback(None)


def _done() -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future
