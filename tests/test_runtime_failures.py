"""Failures inside the pipeline, on the real broker: a record that breaks processing is
dead-lettered (`processing_error`) and its partition goes on; a dead letter that cannot be
written stops the partition's commits, and nothing after it is skipped."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import logging
import math
import os
import re
import signal
import uuid
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from pipeline import (
    PoisonedProcessor,
    committed,
    create_topic,
    eventually,
    make_settings,
    read_dead_letters,
    read_json,
    read_topic,
    send_with_bad_crc,
    typing_event,
)

from processor.broker import LocalBroker
from processor.clock import Clock, SystemClock
from processor.deadletter import DLQ_MESSAGE_BYTES_NEEDED
from processor.domain import SESSION_ID_PATTERN, SinkResult
from processor.emulator.app import SESSION_PATH
from processor.emulator.testing import EmulatorHandle
from processor.models import DlqReason, TypingEvent
from processor.runtime import undecodable
from processor.runtime.kafka import (
    HEALTHY_RUN_S,
    RESTART_BACKOFF_S,
    TopicError,
    TopicSpec,
    check_dlq_message_bytes,
    ensure_topics,
    keep_running,
    raise_for_topic_errors,
)
from processor.runtime.outbound import Headers, Outbound
from processor.runtime.partition import Counters, PartitionWorker
from processor.runtime.reconciler import Reconciler
from processor.runtime.restore import (
    BARRIER_KEY,
    FETCH_WAIT_MS,
    RestoreProgress,
    read_changelog,
)
from processor.runtime.scheduler import Scheduler
from processor.runtime.service import LEASE_TERM_S, TypingProcessor
from processor.settings import KafkaSettings, Settings, TypingSettings
from processor.sink.client import GenesysSink
from processor.sink.config import SinkConfig
from processor.state import EngineConfig, PartitionStore, Work
from processor.state.changelog import decode


class DeadLetterUnwritable(Outbound):
    """A producer that cannot write to the DLQ (e.g. the topic is refused by the cluster)."""

    async def _send(
        self, topic: str, partition: int, records: list[tuple[bytes | None, bytes | None, Headers]]
    ) -> list[asyncio.Future[Any]]:
        if topic == self.typing.dlq_topic:
            raise KafkaError(f"cannot write to {topic}")
        return await super()._send(topic, partition, records)


class DeadLetterUnacknowledged(Outbound):
    """A producer whose dead letters are taken, then never acknowledged (a request timeout,
    a broker that fails the write): later flushes of the partition still succeed."""

    async def _send(
        self, topic: str, partition: int, records: list[tuple[bytes | None, bytes | None, Headers]]
    ) -> list[asyncio.Future[Any]]:
        if topic != self.typing.dlq_topic:
            return await super()._send(topic, partition, records)
        lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        lost.set_exception(KafkaError(f"{topic}: not acknowledged"))
        return [lost]


class BrokenDlqProcessor(TypingProcessor):
    outbound: type[Outbound] = DeadLetterUnwritable

    def __init__(self, settings: Settings, sink: GenesysSink) -> None:
        super().__init__(settings, sink)
        self._outbound = self.outbound(settings.kafka, settings.typing)


class UnacknowledgedDlqProcessor(BrokenDlqProcessor):
    outbound = DeadLetterUnacknowledged


async def produce(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], partition: int = 0
) -> list[int]:
    async with AIOKafkaProducer(bootstrap_servers=bootstrap) as producer:
        offsets = []
        for key, value in records:
            meta = await producer.send_and_wait(topic, value, key=key, partition=partition)
            offsets.append(meta.offset)
        return offsets


@contextlib.asynccontextmanager
async def running(
    settings: Settings, kind: Callable[[Settings, GenesysSink], TypingProcessor]
) -> AsyncIterator[tuple[TypingProcessor, asyncio.Task[None]]]:
    """A processor of `kind` running, once ready, and its task; afterwards stopped
    (whatever became of it) and its sink closed."""
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    processor = kind(settings, sink)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        await eventually(lambda: processor.ready, 60, "processor ready")
        yield processor, task
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await sink.aclose()


def record(session_id: str, **extra: Any) -> tuple[bytes, bytes]:
    return session_id.encode(), orjson.dumps(typing_event(session_id, timeout_ms=30_000, **extra))


async def test_a_record_whose_processing_raises_is_dead_lettered_and_the_partition_goes_on(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    settings = make_settings(bootstrap_servers, emulator)
    emulator.create_session("after")
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    processor = PoisonedProcessor(settings, sink)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        await eventually(lambda: processor.ready, 60, "processor ready")
        poison = record("victim", event_id="poison")
        offsets = await produce(
            bootstrap_servers, settings.typing.input_topic, [poison, record("after")]
        )
        await eventually(
            lambda: emulator.session("after")["customAttributes"].get("typingIndicator"),
            30,
            "the event after the poison one applied",
        )
        letters = await read_json(bootstrap_servers, settings.typing.dlq_topic)
        [letter] = [x for x in letters if x["offset"] == offsets[0]]
        assert letter["reason"] == "processing_error"
        assert "engine bug" in letter["detail"]
        assert base64.b64decode(letter["value_b64"]) == poison[1]
        # counted once: a dead letter, not an event too
        assert (processor.counters.events, processor.counters.dead_letters) == (1, 1)

        async def committed_past_both() -> bool:
            return (await committed(bootstrap_servers, settings, 0) or 0) > offsets[1]

        await eventually(committed_past_both, 30, "offsets committed past both records")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await sink.aclose()


@pytest.mark.parametrize(
    "broken", [BrokenDlqProcessor, UnacknowledgedDlqProcessor], ids=["refused", "unacknowledged"]
)
async def test_an_unwritable_dead_letter_stops_the_partition_and_skips_nothing(
    bootstrap_servers: str, emulator: EmulatorHandle, broken: type[BrokenDlqProcessor]
) -> None:
    """Refused at once, or lost after the producer took it: no later flush of the
    partition moves its commit past the dead letter, even the one made on the way out."""
    settings = make_settings(bootstrap_servers, emulator)
    emulator.create_session("before")
    emulator.create_session("after")
    async with running(settings, broken) as (_, task):
        offsets = await produce(bootstrap_servers, settings.typing.input_topic, [record("before")])

        async def first_committed() -> bool:
            return (await committed(bootstrap_servers, settings, 0) or 0) > offsets[0]

        await eventually(first_committed, 30, "first offset committed")
        bad = await produce(
            bootstrap_servers,
            settings.typing.input_topic,
            [(b"broken", b"{not json"), record("after")],
        )
        await eventually(task.done, 30, "the processor stopped")
        error = task.exception()
        assert isinstance(error, KafkaError)
        assert "partition 0 stopped committing" in str(error)
        # the commit never moved past the dead letter it could not write
        position = await committed(bootstrap_servers, settings, 0)
        assert position is not None
        assert offsets[0] < position <= bad[0]
        audits = await read_json(bootstrap_servers, settings.typing.audit_topic)
        assert "before" in {a["session_id"] for a in audits}


async def test_a_partition_that_stopped_leaves_its_store_to_the_collector(
    bootstrap_servers: str, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restored stores are frozen out of collections (`gc.freeze`): a partition that
    stopped (here: its dead letter refused) and the processor restarting from the last
    commit must not leave the failed worker's store pinned for the process's life."""
    # the failure's log record would hold its traceback, and the store with it, in
    # pytest's capture; production handlers format a record and drop it
    monkeypatch.setattr(logging.getLogger("processor.runtime.partition"), "propagate", False)
    stores = await stores_of_a_processor_that_stopped(bootstrap_servers, emulator)
    gc.collect()
    assert [store() for store in stores] == [None] * len(stores)


async def stores_of_a_processor_that_stopped(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> list[weakref.ref[PartitionStore]]:
    """Run a processor until a refused dead letter stops a partition; its stores, weakly."""
    settings = make_settings(bootstrap_servers, emulator)
    emulator.create_session("kept")
    async with running(settings, BrokenDlqProcessor) as (processor, task):
        await produce(bootstrap_servers, settings.typing.input_topic, [record("kept")])
        await eventually(
            lambda: processor.workers[0].store.tracked_sessions == 1, 30, "the session tracked"
        )
        stores = [weakref.ref(worker.store) for worker in processor.workers.values()]
        await produce(bootstrap_servers, settings.typing.input_topic, [(b"broken", b"{")])
        await eventually(task.done, 30, "the processor stopped")
        assert isinstance(task.exception(), KafkaError)
    return stores


class AlwaysUndecodable(TypingProcessor):
    """Every fetch of its consumer raises as the Kafka client does on a header key that
    is not UTF-8 (a foreign producer writing such keys on every record, or a backlog with
    one in every fetch): only the record-by-record search reads the input."""

    async def _start(self, consumer: AIOKafkaConsumer) -> None:
        await super()._start(consumer)

        async def getmany(*tps: TopicPartition, **options: Any) -> Any:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

        consumer.getmany = getmany  # type: ignore[method-assign]


async def test_input_read_past_undecodable_records_is_committed_all_the_same(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """While every fetch meets a record the client cannot decode, what the search hands on
    is processed, and its offsets are committed as any others: else the group's commit and
    the membership lease (renewed by commits) stand still, and once the lease lapses the
    partitions write nothing and make no call until a fetch succeeds again."""
    settings = make_settings(bootstrap_servers, emulator, topic_partitions=1)
    emulator.create_session("searched")
    async with running(settings, AlwaysUndecodable) as (processor, task):
        offsets = await produce(
            bootstrap_servers, settings.typing.input_topic, [record("searched")]
        )
        await eventually(
            lambda: processor.workers[0].committable == offsets[0] + 1, 30, "record processed"
        )

        async def committed_past_it() -> bool:
            return (await committed(bootstrap_servers, settings, 0) or 0) > offsets[0]

        await eventually(committed_past_it, 10, "its offset committed")
        await eventually(
            lambda: emulator.session("searched")["customAttributes"].get("typingIndicator"),
            10,
            "its indicator set",
        )
        assert not task.done()


async def test_a_partition_given_back_during_a_search_past_undecodable_records_loses_none(
    bootstrap_servers: str, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebalance while a search reads past undecodable records revokes the partition and
    gives it back to this member: what the search read after it goes to no worker, and the
    search must not move the new assignment's position past it (the new worker would
    never see those records, and commit past them, I6); the next search reads them again
    for the partition's new worker."""
    settings = make_settings(bootstrap_servers, emulator, topic_partitions=1)
    emulator.create_session("given-back")
    read_at = undecodable.read_at
    armed = False
    reading, proceed = asyncio.Event(), asyncio.Event()

    async def held_read(raw: Any, tp: TopicPartition, start: int) -> Any:
        nonlocal armed
        if armed:
            armed = False
            reading.set()
            await proceed.wait()
        return await read_at(raw, tp, start)

    monkeypatch.setattr(undecodable, "read_at", held_read)
    async with running(settings, AlwaysUndecodable) as (processor, _):
        before = processor.workers[0]
        armed = True
        await eventually(reading.is_set, 10, "a search under way")
        await produce(bootstrap_servers, settings.typing.input_topic, [record("given-back")])
        # a member joining for another topic: the group revokes every partition, then
        # gives this member its partition back
        other = AIOKafkaConsumer(
            settings.typing.dlq_topic,
            bootstrap_servers=bootstrap_servers,
            group_id=settings.typing.group_id,
            session_timeout_ms=6_000,
            heartbeat_interval_ms=1_000,
        )
        await other.start()
        try:

            def given_back() -> bool:
                worker = processor.workers.get(0)
                return worker is not None and worker is not before and worker.restored.is_set()

            await eventually(given_back, 60, "the partition given back to this member")
            proceed.set()
            await eventually(
                lambda: processor.workers[0].store.session("given-back") is not None,
                30,
                "the record processed by the partition's new worker",
            )
        finally:
            proceed.set()
            await other.stop()


async def test_a_partition_revoked_before_a_search_rewinds_it_is_left_where_it_is(
    bootstrap_servers: str, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search past undecodable records puts every partition back before it reads any (a
    commit looked up on the way): a rebalance meanwhile must not have the search move a
    partition of an assignment that is not the one it searches for. A partition revoked
    made the seek raise and the processor restart; one given back had its new assignment
    moved to where the old worker stood, past what the new worker had not processed (I6)."""
    settings = make_settings(bootstrap_servers, emulator, topic_partitions=2)
    emulator.create_session("kept")
    rewind = undecodable._rewind
    armed = False
    rewinding, proceed = asyncio.Event(), asyncio.Event()

    async def held_rewind(consumer: AIOKafkaConsumer, tp: TopicPartition, *rest: Any) -> Any:
        nonlocal armed
        # (held in a search of both partitions: none paused)
        if armed and len(consumer.assignment()) == 2 and not consumer.paused():
            armed = False
            rewinding.set()
            await proceed.wait()
        return await rewind(consumer, tp, *rest)

    monkeypatch.setattr(undecodable, "_rewind", held_rewind)
    async with running(settings, AlwaysUndecodable) as (processor, task):
        await eventually(lambda: processor.lease.left() > 0, 30, "the member confirmed")
        before = dict(processor.workers)
        armed = True
        await eventually(rewinding.is_set, 10, "a search rewinding both partitions")
        # a member joining for the same topic: the group revokes both partitions, then
        # gives each member one
        other = AIOKafkaConsumer(
            settings.typing.input_topic,
            bootstrap_servers=bootstrap_servers,
            group_id=settings.typing.group_id,
            session_timeout_ms=6_000,
            heartbeat_interval_ms=1_000,
            enable_auto_commit=False,
        )
        await other.start()
        try:

            def one_given_back() -> bool:
                return len(processor.workers) == 1 and all(
                    worker is not before[partition] and worker.restored.is_set()
                    for partition, worker in processor.workers.items()
                )

            await eventually(one_given_back, 60, "one partition given to the other member")
            (kept,) = processor.workers
            proceed.set()
            await produce(bootstrap_servers, settings.typing.input_topic, [record("kept")], kept)

            def processed() -> bool:
                worker = processor.workers.get(kept)
                return worker is not None and worker.store.session("kept") is not None

            await eventually(
                lambda: task.done() or processed(), 30, "the record processed by the new worker"
            )
            assert not task.done(), f"the processor stopped: {task.exception()!r}"
        finally:
            proceed.set()
            await other.stop()


class StuckRestoreProcessor(TypingProcessor):
    """A restore that does not finish until released (a long changelog, a slow broker)."""

    def __init__(self, settings: Settings, sink: GenesysSink) -> None:
        super().__init__(settings, sink)
        self.release_restore = asyncio.Event()

    async def _restore(self, partition: int) -> PartitionStore:
        await self.release_restore.wait()
        return await super()._restore(partition)


class HeldBackRestoreProcessor(TypingProcessor):
    """A restore that reads the changelog, then returns only once `hand_over` is set."""

    def __init__(self, settings: Settings, sink: GenesysSink) -> None:
        super().__init__(settings, sink)
        self.read = asyncio.Event()
        self.hand_over = asyncio.Event()

    async def _restore(self, partition: int) -> PartitionStore:
        store = await super()._restore(partition)
        self.read.set()
        await self.hand_over.wait()
        return store


async def test_a_restore_that_ends_as_its_partition_is_revoked_leaves_no_store_behind(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """A restore that ends just as the revocation begins hands its worker to the scheduler
    after the revocation took the partition from it: the scheduler must not keep the closed
    worker, and its store, for the life of the process."""
    settings = make_settings(bootstrap_servers, emulator, topic_partitions=1)
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    processor = HeldBackRestoreProcessor(settings, sink)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        await eventually(processor.read.is_set, 60, "the changelog read")
        worker = processor.workers[0]
        processor.hand_over.set()
        await processor.release([TopicPartition(settings.typing.input_topic, 0)])
        assert worker.restored.is_set()
        stores = [weakref.ref(worker.store)]
        del worker
        gc.collect()
        assert [store() for store in stores] == [None]
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await sink.aclose()


async def write_unknown_format(bootstrap: str, topic: str) -> None:
    async with AIOKafkaProducer(bootstrap_servers=bootstrap) as producer:
        await producer.send_and_wait(topic, b"\x09garbage", key=b"s1", partition=0)


async def write_bad_crc(bootstrap: str, topic: str) -> None:
    await send_with_bad_crc(bootstrap, topic, b"s1", b"\x09garbage")


@pytest.mark.parametrize("write", [write_unknown_format, write_bad_crc])
async def test_a_changelog_it_cannot_read_stops_the_partition_and_says_so(
    bootstrap_servers: str,
    emulator: EmulatorHandle,
    write: Callable[[str, str], Awaitable[None]],
) -> None:
    """A changelog record this release cannot decode (another format, or a batch whose CRC
    does not match, which every read meets again): the partition is not restored past it
    (that would forget shown indicators); it stops, readiness says why, and the processor
    stops to be restarted, instead of a partition that silently never runs (or retries
    its restore for ever, its readiness saying only "still restoring")."""
    settings = make_settings(bootstrap_servers, emulator)
    async with GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing)) as sink:
        processor = TypingProcessor(settings, sink)
        await processor.prepare_topics()
        await write(bootstrap_servers, settings.typing.resolved_changelog_topic)
        stop = asyncio.Event()
        task = asyncio.create_task(processor.run(stop))
        try:
            await eventually(task.done, 60, "the processor stopped")
            error = task.exception()
            assert isinstance(error, KafkaError)
            assert "partition 0 stopped committing" in str(error)
            assert "ChangelogError" in str(error)
            assert not processor.ready
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("missing", ["dlq_topic", "crm_topic", "audit_topic"])
async def test_a_topic_it_writes_that_does_not_exist_stops_start_up_and_says_which(
    bootstrap_servers: str, emulator: EmulatorHandle, missing: str
) -> None:
    """With TYPING_CREATE_TOPICS off, every topic the processor writes must exist, as the
    input and the changelog must: a mistyped TYPING_DLQ_TOPIC would otherwise pass
    start-up and readiness, and the first malformed record, whose dead letter cannot be
    written, would stop its partition there, at every restart."""
    settings = make_settings(bootstrap_servers, emulator, create_topics=False)
    typing = settings.typing
    absent = getattr(typing, missing)
    names = [typing.input_topic, typing.crm_topic, typing.audit_topic, typing.dlq_topic]
    await ensure_topics(
        settings.kafka,
        [
            *(TopicSpec(name) for name in names if name != absent),
            TopicSpec(typing.resolved_changelog_topic, compacted=True),
        ],
        typing.topic_partitions,
        1,
    )
    refusal = await start_up_refusal(settings)
    assert isinstance(refusal, TopicError), f"started without {absent}"
    assert f"topic {absent} does not exist" in str(refusal)


async def start_up_refusal(settings: Settings) -> BaseException | None:
    """Start a processor until it is ready or stops; what stopped it (None: ready)."""
    async with GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing)) as sink:
        processor = TypingProcessor(settings, sink)
        stop = asyncio.Event()
        task = asyncio.create_task(processor.run(stop))
        try:
            await eventually(lambda: task.done() or processor.ready, 60, "start-up decided")
            return task.exception() if task.done() else None
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(("policy", "refused"), [("delete", True), ("compact,delete", False)])
async def test_a_changelog_that_is_not_compacted_stops_start_up(
    bootstrap_servers: str, emulator: EmulatorHandle, policy: str, refused: bool
) -> None:
    """A changelog created out of band with the default `delete` policy keeps every change
    until its retention, and each restore would read all of it while clears wait: start-up
    refuses it, naming the topic and its policy. Compacted and deleted is compacted."""
    settings = make_settings(bootstrap_servers, emulator, create_topics=False)
    typing = settings.typing
    names = [typing.input_topic, typing.crm_topic, typing.audit_topic, typing.dlq_topic]
    await ensure_topics(settings.kafka, [TopicSpec(name) for name in names], 2, 1)
    await create_topic(
        bootstrap_servers, typing.resolved_changelog_topic, 2, {"cleanup.policy": policy}
    )
    refusal = await start_up_refusal(settings)
    if not refused:
        assert refusal is None
        return
    assert isinstance(refusal, TopicError)
    assert str(refusal).startswith(
        f"changelog {typing.resolved_changelog_topic} has cleanup.policy=delete:"
        " it must be compacted"
    )


@pytest.mark.parametrize(
    ("limit", "refused"), [(256 * 1024, True), (DLQ_MESSAGE_BYTES_NEEDED, False)]
)
async def test_a_dlq_that_refuses_the_largest_dead_letter_stops_start_up(
    bootstrap_servers: str, emulator: EmulatorHandle, limit: int, refused: bool
) -> None:
    """A DLQ created out of band with a smaller max.message.bytes than a dead letter may
    take refuses the largest letters (any input value over 256 KiB gives one of 344 KiB),
    and each stops its partition for good: start-up refuses it, naming the topic, its
    limit and the least it needs."""
    settings = make_settings(bootstrap_servers, emulator, create_topics=False)
    typing = settings.typing
    names = [typing.input_topic, typing.crm_topic, typing.audit_topic]
    await ensure_topics(
        settings.kafka,
        [
            *(TopicSpec(name) for name in names),
            TopicSpec(typing.resolved_changelog_topic, compacted=True),
        ],
        2,
        1,
    )
    await create_topic(bootstrap_servers, typing.dlq_topic, 2, {"max.message.bytes": str(limit)})
    refusal = await start_up_refusal(settings)
    if not refused:
        assert refusal is None
        return
    assert isinstance(refusal, TopicError)
    assert str(refusal).startswith(
        f"DLQ {typing.dlq_topic} has max.message.bytes={limit}: a dead letter takes up to"
        f" {DLQ_MESSAGE_BYTES_NEEDED} bytes"
    )


def test_a_dlq_limit_reported_as_no_number_is_not_checked_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="processor.runtime.kafka"):
        check_dlq_message_bytes("dlq", {"max.message.bytes": "lots"})  # no TopicError
    assert "the max.message.bytes of dlq is 'lots', no number: not checked" in caplog.text


async def test_a_stop_while_partitions_restore_ends_promptly_and_leaves_no_worker(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    settings = make_settings(bootstrap_servers, emulator)
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    processor = StuckRestoreProcessor(settings, sink)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        await eventually(lambda: processor.restoring > 0, 60, "partitions assigned, restoring")
        stop.set()
        # the stop must end the restores under way, not wait for them
        await asyncio.wait_for(task, 20)
        assert processor.workers == {}
    finally:
        stop.set()
        processor.release_restore.set()
        await asyncio.gather(task, return_exceptions=True)
        await sink.aclose()


async def test_a_long_restore_on_one_member_holds_no_other_member_of_the_group(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """A member whose restores do not end (a long changelog, a slow broker) must not hold
    the group: a member that joins meanwhile gets its share of the partitions, restores
    them and processes them. (The restore ran inside the rebalance listener, which the
    group waits for: no member got anything until the slow one finished.)"""
    settings = make_settings(bootstrap_servers, emulator, topic_partitions=4)
    slow_sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    slow = StuckRestoreProcessor(settings, slow_sink)
    other = TypingProcessor(settings, sink)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(slow.run(stop))]
    try:
        await eventually(lambda: slow.restoring == 4, 60, "every partition restoring")
        tasks.append(asyncio.create_task(other.run(stop)))
        await eventually(lambda: other.ready, 60, "the joining member ready")
        assert 0 < len(other.workers) < 4
        assert slow.restoring == 4 - len(other.workers)
        slow.release_restore.set()
        await eventually(lambda: slow.ready, 60, "the slow member ready once released")
    finally:
        stop.set()
        slow.release_restore.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await slow_sink.aclose()
        await sink.aclose()


async def test_records_queued_while_their_partition_restores_are_not_committed(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """Renewing its membership lease, the processor commits only offsets already safe:
    records handed to a partition still restoring are not processed yet, and a commit past
    them would lose them if the partition moved on before the restore ended (I6). Where
    the first of them begins is safe (nothing was committed before)."""
    settings = make_settings(bootstrap_servers, emulator)
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    processor = StuckRestoreProcessor(settings, sink)
    await processor.prepare_topics()
    offsets = await produce(
        bootstrap_servers, settings.typing.input_topic, [record("q1"), record("q2")]
    )
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:

        def queued() -> bool:
            worker = processor.workers.get(0)
            return worker is not None and worker.first_offset is not None

        await eventually(queued, 60, "records queued while the partition restores")
        await eventually(lambda: processor.lease.proven_at > -math.inf, 10, "lease renewed")
        assert await committed(bootstrap_servers, settings, 0) in (None, offsets[0])
    finally:
        stop.set()
        processor.release_restore.set()
        await asyncio.gather(task, return_exceptions=True)
        await sink.aclose()


@dataclass
class Standalone:
    """A partition worker outside any group, on the real broker and emulator."""

    worker: PartitionWorker
    store: PartitionStore
    sink: GenesysSink
    reconciler: Reconciler

    def take(self, session_id: str) -> Work:
        """The session's queued work, taken as the scheduler takes it."""
        work = self.store.take(session_id)
        assert work is not None
        return work


@contextlib.asynccontextmanager
async def standalone_worker(
    settings: Settings,
    emulator: EmulatorHandle,
    sessions: list[str],
    outbound: Outbound | None = None,
    timeout_ms: int = 30_000,
    target: dict[str, str] | None = None,
    clock: Clock | None = None,
    **options: Any,
) -> AsyncIterator[Standalone]:
    """A restored worker of partition 0 whose store has a typing event (of `timeout_ms`,
    for `target`: None, the webchat session) of each of `sessions` (created in the
    emulator), with `outbound` (started here) and its own sink; `options` go to the
    worker. Everything is closed afterwards."""
    clock = clock or SystemClock()
    store = PartitionStore(0, EngineConfig(), clock)
    for offset, session_id in enumerate(sessions):
        emulator.create_session(session_id)
        event = typing_event(session_id, timeout_ms=timeout_ms, target=target)
        store.on_event(TypingEvent.model_validate(event), offset)
    outbound = outbound or Outbound(settings.kafka, settings.typing)
    await outbound.start()
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    reconciler = Reconciler(sink, 4)

    async def restored() -> PartitionStore:
        return store

    worker = PartitionWorker(
        settings.typing.input_topic, 0, restored, outbound, reconciler, clock, Counters(), **options
    )
    try:
        await worker.restored.wait()
        yield Standalone(worker, store, sink, reconciler)
    finally:
        await worker.close(1.0)
        await reconciler.aclose()
        await sink.aclose()
        await outbound.stop()


async def test_a_worker_ends_its_stores_replay_hold_once_its_input_reaches_the_end(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """A restored store holds new sets until the input since the last commit is processed
    again (`PartitionStore.hold_for_replay`): the worker tells it how far processing has
    come, records and offsets that hold none (`pass_to`) alike, so the hold ends with the
    replay, not at its bound."""
    settings = make_settings(bootstrap_servers, emulator)
    topic = settings.typing.input_topic
    async with standalone_worker(settings, emulator, []) as alone:
        store, worker = alone.store, alone.worker
        store.hold_for_replay(2, SystemClock().now_ms() + 600_000)
        key, value = record("replayed")
        worker.submit([ConsumerRecord(topic, 0, 0, 0, 0, key, value, None, 8, 0, [])])
        await eventually(lambda: worker.counters.events == 1, 10, "the first record processed")
        assert store.replaying  # the end is further on
        assert store.queued_work == 0  # its set waits
        worker.pass_to(2)  # the consumer stands at the end: nothing more to process
        await eventually(lambda: not store.replaying, 10, "the hold over with the replay")
        assert store.is_queued("replayed") or store.is_in_flight("replayed")


async def test_turns_that_change_no_session_keep_no_acknowledged_report(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """A turn's CRM and audit acknowledgements are kept until a changelog write waits for
    them (I6). Turns that change no session (a producer resending the same event, say)
    write no changelog: what they kept grew with every turn, for as long as such input
    lasted, though acknowledged long since."""
    settings = make_settings(bootstrap_servers, emulator)
    topic = settings.typing.input_topic
    key, value = record("resent")
    turns = 40
    async with standalone_worker(settings, emulator, []) as alone:
        worker = alone.worker
        for offset in range(turns):
            worker.submit([ConsumerRecord(topic, 0, offset, 0, 0, key, value, None, 6, 0, [])])
            await eventually(
                lambda n=offset + 1: worker.counters.events == n, 10, f"record {offset} processed"
            )
        await eventually(lambda: worker.committable == turns, 10, "every turn acknowledged")
        assert worker.failed is None
        assert worker.counters.decisions["duplicate"] == turns - 1
        # at most the last turn's, if its acknowledgement came after it
        assert len(worker._reports) <= 2


async def test_a_rejected_record_of_the_oldest_format_is_dead_lettered_without_a_timestamp(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """A message of format v0 (a topic of an old cluster) has no timestamp: the client hands
    it out with None for the timestamp and its type, not -1. Its dead letter says it has
    none; building it raised, and so did the processing-error letter after it, which stopped
    the partition at that record after every restart."""
    settings = make_settings(bootstrap_servers, emulator)
    topic = settings.typing.input_topic
    builder = LegacyRecordBatchBuilder(magic=0, compression_type=0, batch_size=1 << 16)
    builder.append(0, timestamp=None, key=b"old", value=b"{not json")
    # as the consumer's fetcher hands it out
    [old] = MemoryRecords(bytes(builder.build())).next_batch()
    fetched = ConsumerRecord(
        topic, 0, 0, old.timestamp, old.timestamp_type, old.key, old.value, None, 3, 9, ()
    )
    assert (fetched.timestamp, fetched.timestamp_type) == (None, None)
    async with standalone_worker(settings, emulator, []) as alone:
        worker = alone.worker
        worker.submit([fetched])
        await eventually(
            lambda: worker.committable == 1 or worker.failed is not None, 10, "the record done"
        )
        assert worker.failed is None
        assert worker.counters.dead_letters == 1
    letters = await read_dead_letters(bootstrap_servers, settings.typing.dlq_topic)
    assert [(x.offset, x.reason, x.record_timestamp, x.record_timestamp_type) for x in letters] == [
        (0, DlqReason.INVALID_JSON, None, None)
    ]
    assert letters[0].value_b64 == base64.b64encode(b"{not json").decode()


async def test_a_restore_finds_where_its_partitions_replay_starts_and_ends(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """Input since the last commit is replayed after a restore (new sets wait for it): a
    partition committed to its end has none; one never committed replays from its
    beginning, which for an empty one is its end (no wait either)."""
    settings = make_settings(bootstrap_servers, emulator)
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    await TypingProcessor(settings, sink).prepare_topics()
    await sink.aclose()
    await produce(bootstrap_servers, settings.typing.input_topic, [record("a1"), record("a2")])
    async with running(settings, TypingProcessor) as (processor, _):

        async def all_committed() -> bool:
            return await committed(bootstrap_servers, settings, 0) == 2

        await eventually(all_committed, 30, "the input committed")
        assert await processor._replay_span(0) == (2, 2)
        assert await processor._replay_span(1) == (0, 0)
    await produce(bootstrap_servers, settings.typing.input_topic, [record("a3")])
    async with running(settings, TypingProcessor) as (processor, _):
        start, end = await processor._replay_span(0)
        assert (start, end) in ((2, 3), (3, 3))  # (3: replayed, committed again already)


async def test_a_fenced_partition_sends_nothing_and_gives_back_what_it_had_taken(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """A refused commit means another member may own the partition: a call taken but not
    sent yet never goes out, its budget comes back, and the store hears it was not sent."""
    settings = make_settings(bootstrap_servers, emulator)
    async with standalone_worker(settings, emulator, ["fenced"]) as alone:
        worker, store, budget = alone.worker, alone.store, alone.sink.budget
        assert worker.accepting
        work = alone.take("fenced")
        level = budget.level()
        budget.spend(2)
        worker.launch(work, 2)
        assert alone.reconciler.free_slots == 3  # its slot is taken from now on
        worker.fence()  # before the worker's next turn could send it
        assert not worker.accepting
        assert alone.reconciler.free_slots == 4
        await eventually(lambda: not store.is_in_flight("fenced"), 10, "the store heard back")
        assert store.is_backing_off("fenced") or store.is_queued("fenced")
        assert budget.level() >= level - 0.01  # refunded
        assert emulator.count("PATCH", SESSION_PATH) == 0
        assert emulator.history("fenced") == []


async def test_a_call_still_retrying_when_its_partition_goes_is_cancelled(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """Genesys failing, a call retries with backoff for seconds; once its revoked partition's
    grace is over it is cancelled, not left to write after the next owner has read the
    session back and acted on it."""
    settings = make_settings(bootstrap_servers, emulator)
    emulator.set_faults(error_rate=1.0, latency_ms=1000)  # each attempt: a second, then a 5xx
    async with standalone_worker(settings, emulator, ["retrying"]) as alone:
        alone.worker.launch(alone.take("retrying"), 2)
        await eventually(
            lambda: emulator.count("GET", SESSION_PATH) >= 1, 10, "the call meets a 5xx"
        )
        assert alone.reconciler.in_flight == 1
        await alone.worker.close(0.2)
        assert alone.reconciler.in_flight == 0


class GatedOutbound(Outbound):
    """Holds the next changelog send after each `hold()` until its `release` is set; notes
    the call intents (session, version) the cluster has acknowledged."""

    def __init__(self, kafka: KafkaSettings, typing: TypingSettings) -> None:
        super().__init__(kafka, typing)
        self._gates: list[tuple[asyncio.Event, asyncio.Event]] = []
        self.acked: set[tuple[str, int]] = set()

    def hold(self) -> tuple[asyncio.Event, asyncio.Event]:
        """(holding: set once a send waits, release: set it to let the send go)."""
        gate = asyncio.Event(), asyncio.Event()
        self._gates.append(gate)
        return gate

    def release_all(self) -> None:
        for _, release in self._gates:
            release.set()

    async def _send(
        self, topic: str, partition: int, records: list[tuple[bytes | None, bytes | None, Headers]]
    ) -> list[asyncio.Future[Any]]:
        if topic != self.changelog_topic:
            return await super()._send(topic, partition, records)
        if self._gates:
            holding, release = self._gates.pop(0)
            holding.set()
            await release.wait()
        futures = await super()._send(topic, partition, records)
        intents = {
            (session.sid, session.intent.version)
            for key, value, _ in records
            if key is not None and value is not None
            for session in [decode(key, value)]
            if session.intent is not None
        }

        def acked(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None:
                self.acked.update(intents)

        asyncio.gather(*futures).add_done_callback(acked)
        return futures


async def test_a_call_taken_while_its_worker_produces_waits_for_its_own_intent(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """The scheduler may take work while the worker's turn awaits the produce of what it
    has drained: that work's intent goes in the next flush, and its call waits for that
    flush's acknowledgement, not the one under way (I6: the intent is on the changelog
    before the call goes out)."""
    settings = make_settings(bootstrap_servers, emulator)
    outbound = GatedOutbound(settings.kafka, settings.typing)
    intent_acked: dict[str, bool] = {}  # as each call goes out
    async with standalone_worker(settings, emulator, ["first", "second"], outbound) as alone:
        apply = alone.sink.apply

        async def watched_apply(session_id: str, *args: Any, **kwargs: Any) -> SinkResult:
            intent_acked[session_id] = (session_id, kwargs["version"]) in outbound.acked
            return await apply(session_id, *args, **kwargs)

        alone.sink.apply = watched_apply  # type: ignore[method-assign]
        try:
            holding, release = outbound.hold()
            alone.worker.launch(alone.take("first"), 2)
            await asyncio.wait_for(holding.wait(), 10)  # its turn is producing the intent
            alone.worker.launch(alone.take("second"), 2)
            held_again, release_again = outbound.hold()  # the next flush: the second's intent
            release.set()
            await asyncio.wait_for(held_again.wait(), 10)
            await eventually(lambda: emulator.count("PATCH", SESSION_PATH) >= 1, 10, "first landed")
            release_again.set()
            await eventually(lambda: len(intent_acked) == 2, 10, "both calls made")
            assert intent_acked == {"first": True, "second": True}
        finally:
            outbound.release_all()


async def test_a_fence_while_the_intent_is_produced_stops_the_call(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """The commit refused while the worker's turn produces a call's intent: another member
    may own the partition by now, and the call never goes out."""
    settings = make_settings(bootstrap_servers, emulator)
    outbound = GatedOutbound(settings.kafka, settings.typing)
    async with standalone_worker(settings, emulator, ["fenced"], outbound) as alone:
        try:
            holding, release = outbound.hold()
            alone.worker.launch(alone.take("fenced"), 2)
            await asyncio.wait_for(holding.wait(), 10)  # its turn is producing the intent
            alone.worker.fence()
            release.set()
            await eventually(
                lambda: not alone.store.is_in_flight("fenced"), 10, "the store heard back"
            )
            assert emulator.count("PATCH", SESSION_PATH) == 0
            assert alone.reconciler.free_slots == 4  # its slot is free again
        finally:
            outbound.release_all()


async def test_a_partition_closed_while_the_intent_is_produced_frees_the_calls_slot(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """Revoked while its turn produces a call's intent: the call never goes out, and the
    slot it held in the reconciler is free for the partitions that stay."""
    settings = make_settings(bootstrap_servers, emulator)
    outbound = GatedOutbound(settings.kafka, settings.typing)
    async with standalone_worker(settings, emulator, ["revoked"], outbound) as alone:
        try:
            holding, release = outbound.hold()
            alone.worker.launch(alone.take("revoked"), 2)
            await asyncio.wait_for(holding.wait(), 10)  # its turn is producing the intent
            assert alone.reconciler.free_slots == 3
            closing = asyncio.ensure_future(alone.worker.close(1.0))
            await eventually(lambda: not alone.worker.accepting, 10, "the worker closing")
            release.set()
            await asyncio.wait_for(closing, 10)
            assert alone.reconciler.free_slots == 4
            assert alone.reconciler.in_flight == 0
            assert emulator.count("PATCH", SESSION_PATH) == 0
        finally:
            outbound.release_all()


class ChangelogUnwritable(Outbound):
    """A producer that cannot write to the changelog once `failing`."""

    failing = False

    async def _send(
        self, topic: str, partition: int, records: list[tuple[bytes | None, bytes | None, Headers]]
    ) -> list[asyncio.Future[Any]]:
        if self.failing and topic == self.changelog_topic:
            raise KafkaError(f"cannot write to {topic}")
        return await super()._send(topic, partition, records)


async def test_a_flush_that_fails_gives_back_the_slots_of_the_calls_it_held(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """A call's intent cannot be written: the partition stops (nothing is skipped), its
    call never goes out, and the slot and budget it held go back to the other partitions
    at once, not when the partition is closed."""
    settings = make_settings(bootstrap_servers, emulator)
    outbound = ChangelogUnwritable(settings.kafka, settings.typing)
    async with standalone_worker(settings, emulator, ["unwritten"], outbound) as alone:
        budget = alone.sink.budget
        level = budget.level()
        budget.spend(2)
        outbound.failing = True
        alone.worker.launch(alone.take("unwritten"), 2)
        await eventually(lambda: alone.worker.failed is not None, 10, "the partition stopped")
        assert alone.reconciler.free_slots == 4
        assert budget.level() >= level - 0.01  # refunded
        assert emulator.count("PATCH", SESSION_PATH) == 0


async def test_calls_handed_to_a_worker_hold_their_slots_until_they_are_launched(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """Work the scheduler hands to a worker reaches the reconciler only once its intent is
    acknowledged on the changelog (I6). A round planned meanwhile counts that work against
    the in-flight limit (TYPING_MAX_IN_FLIGHT) and the slots kept for clears: else it sends
    as many again, more calls go out at once than the limit allows, and sets take the slots
    a clear needs. Once launched and landed, the slots are free again."""
    settings = make_settings(bootstrap_servers, emulator, api_rate_per_minute=6_000)
    outbound = GatedOutbound(settings.kafka, settings.typing)
    sessions = [f"pending-{i}" for i in range(8)]
    async with standalone_worker(settings, emulator, sessions, outbound) as alone:
        reconciler = alone.reconciler  # 4 calls at most, one of them kept for clears
        budget = alone.sink.budget
        budget.refund(budget.capacity, planned=False)  # tokens are not what limits here
        scheduler = Scheduler(reconciler, SystemClock())
        scheduler.attach(0, alone.worker)
        calls_go = asyncio.Event()
        out: set[str] = set()
        entered: list[str] = []
        most = 0
        apply = alone.sink.apply

        async def held_apply(session_id: str, *args: Any, **kwargs: Any) -> SinkResult:
            nonlocal most
            out.add(session_id)
            entered.append(session_id)
            most = max(most, len(out))
            try:
                await calls_go.wait()
                return await apply(session_id, *args, **kwargs)
            finally:
                out.discard(session_id)

        alone.sink.apply = held_apply  # type: ignore[method-assign]
        try:
            holding, release = outbound.hold()
            first, _ = scheduler.plan_round()
            assert first == 3  # every set slot
            await asyncio.wait_for(holding.wait(), 10)  # their intents await the ack
            second, _ = scheduler.plan_round()  # planned while those calls are not out yet
            release.set()
            await eventually(
                lambda: len(entered) == first + second, 10, "every call handed out is out"
            )
            assert most <= 3, f"{most} sets out at once, with 4 calls at most and 1 kept for clears"
            calls_go.set()
            await eventually(lambda: reconciler.in_flight == 0, 10, "the calls landed")
            assert reconciler.free_slots == 4
            third, _ = scheduler.plan_round()
            assert third == 3  # the slots are free again
        finally:
            calls_go.set()
            outbound.release_all()


async def test_a_replica_that_cannot_count_the_input_partitions_spends_no_more_than_its_share(
    bootstrap_servers: str, emulator: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """Assigned partitions while the cluster's metadata names none of the input topic's:
    the replica takes the partitions to be as many as configured, or more when the highest
    one it owns says so, and says it does; it kept the share it had (at start-up the whole
    OAuth client's rate)."""
    settings = make_settings(bootstrap_servers, emulator, topic_partitions=2)
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    processor = TypingProcessor(settings, sink)  # not started: no metadata at all
    topic = settings.typing.input_topic
    assigned = [TopicPartition(topic, 0), TopicPartition(topic, 3)]
    try:
        with caplog.at_level(logging.WARNING, logger="processor.runtime.service"):
            await processor.acquire(assigned)
        assert sink.budget.share == pytest.approx(2 / 4)  # partition 3 exists: 4 at least
        assert any("partition count" in r.getMessage() for r in caplog.records)
    finally:
        await processor.release(assigned)
        await sink.aclose()


class ReportsWatched(Outbound):
    """Notes, as each changelog record goes to the producer, whether the CRM and audit
    records sent before it for the same session were all acknowledged already."""

    def __init__(self, kafka: KafkaSettings, typing: TypingSettings) -> None:
        super().__init__(kafka, typing)
        self.reports: dict[bytes, list[asyncio.Future[Any]]] = {}
        self.unreported: list[bytes] = []  # changelog keys sent ahead of their reports' acks

    async def _send(
        self, topic: str, partition: int, records: list[tuple[bytes | None, bytes | None, Headers]]
    ) -> list[asyncio.Future[Any]]:
        if topic == self.changelog_topic:
            for key, _, _ in records:
                if key is not None and not all(f.done() for f in self.reports.get(key, [])):
                    self.unreported.append(key)
        futures = await super()._send(topic, partition, records)
        if topic in (self.typing.crm_topic, self.typing.audit_topic):
            for key, _, _ in records:
                if key is not None:
                    self.reports.setdefault(key, []).extend(futures)
        return futures


def agent_typing_target(emulator: EmulatorHandle) -> dict[str, str]:
    """The target of agent typing in a conversation created in the emulator for it."""
    conversation, communication = str(uuid.uuid4()), str(uuid.uuid4())
    emulator.create_conversation(conversation, [communication])
    return {
        "kind": "agent_typing",
        "conversation_id": conversation,
        "communication_id": communication,
    }


async def test_an_outcome_is_on_the_changelog_only_once_its_report_is_acknowledged(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """The CRM and audit records of a call's outcome, and the audit record of a timer's
    expiry, are acknowledged before the changelog says the outcome is known: else a crash
    in between restores a store with nothing left to redo, and the report is lost for good
    (I6)."""
    settings = make_settings(bootstrap_servers, emulator)
    outbound = ReportsWatched(settings.kafka, settings.typing)
    agent = agent_typing_target(emulator)
    # every turn flushes the changelog: the outcome's turn too
    async with standalone_worker(
        settings, emulator, ["reported"], outbound, 1_000, agent, flush_interval_ms=0
    ) as alone:
        alone.worker.launch(alone.take("reported"), 1)
        await eventually(lambda: b"reported" in outbound.reports, 10, "the outcome reported")
        reports = len(outbound.reports[b"reported"])
        # shown until its deadline: a timer's turn says it lapsed (no call)
        await eventually(
            lambda: len(outbound.reports[b"reported"]) > reports, 10, "the lapse audited"
        )
        await alone.worker.flush()
        assert outbound.unreported == []


class AuditsUnacknowledged(Outbound):
    """Audit records go to the producer and are never acknowledged, once `failing`."""

    failing = False

    async def _send(
        self, topic: str, partition: int, records: list[tuple[bytes | None, bytes | None, Headers]]
    ) -> list[asyncio.Future[Any]]:
        if self.failing and topic == self.typing.audit_topic:
            lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            lost.set_exception(KafkaError(f"{topic}: not acknowledged"))
            return [lost]
        return await super()._send(topic, partition, records)


class ShiftedClock:
    """The system's time, moved on by `shift` ms when a test says so."""

    def __init__(self) -> None:
        self.shift = 0

    def now_ms(self) -> int:
        return SystemClock().now_ms() + self.shift


async def test_a_lapse_found_in_an_input_turn_is_recorded_only_once_it_is_audited(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """Timers run in every turn: a messaging indicator whose "shown until" passed while
    input waited lapses in an input turn. Replaying that input would not decide the lapse
    again, so its audit record must be acknowledged before the changelog records it; when
    it is not, the changelog still shows the indicator, and a restart lapses and audits it
    again (I6)."""
    settings = make_settings(bootstrap_servers, emulator)
    outbound = AuditsUnacknowledged(settings.kafka, settings.typing)
    agent = agent_typing_target(emulator)
    clock = ShiftedClock()
    async with standalone_worker(
        settings, emulator, ["lapser"], outbound, 5_000, agent, clock, flush_interval_ms=0
    ) as alone:
        worker, store = alone.worker, alone.store
        worker.launch(alone.take("lapser"), 1)

        def shown() -> bool:
            session = store.session("lapser")
            return session is not None and session.remote is not None and session.intent is None

        await eventually(shown, 10, "the indicator shown")
        session = store.session("lapser")
        assert session is not None
        shown_version = session.version
        await worker.flush()
        outbound.failing = True
        clock.shift += 10_000  # its "shown until" passes while input is queued
        bystander = typing_event("bystander", timeout_ms=30_000, occurred_at=clock.now_ms())
        key, value = b"bystander", orjson.dumps(bystander)
        worker.submit(
            [ConsumerRecord(settings.typing.input_topic, 0, 1, 0, 0, key, value, None, 9, 0, [])]
        )
        await eventually(lambda: worker.failed is not None, 10, "the lost audit noticed")
    records = await read_changelog(
        {"bootstrap_servers": bootstrap_servers}, settings.typing.resolved_changelog_topic, 0
    )
    again = PartitionStore.restore(0, EngineConfig(), clock, records)
    restored = again.session("lapser")
    assert restored is not None
    assert restored.remote is not None
    assert restored.version == shown_version
    clock.shift += 10  # the restored store's first tick
    again.on_tick()
    assert [a.result.value for a in again.drain().audits] == ["lapsed"]


async def test_a_processor_built_and_never_run_leaves_no_kafka_client_to_close(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """Preparing topics with a processor that is then dropped (a test, a tool) opens no
    client it would have to close."""
    settings = make_settings(bootstrap_servers, emulator)
    async with GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing)) as sink:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            processor = TypingProcessor(settings, sink)
            await processor.prepare_topics()
            del processor
            gc.collect()
    assert [str(w.message) for w in caught if "AIOKafka" in str(w.message)] == []


async def test_a_cluster_down_at_start_leaves_no_kafka_client_open(
    emulator: EmulatorHandle,
) -> None:
    """`run` restarts a processor whose cluster is down: each failed start must close the
    clients it opened, or every restart leaks a producer (and logs that it did)."""
    settings = make_settings("127.0.0.1:1", emulator)  # nothing listens on port 1
    async with GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing)) as sink:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            for _ in range(2):
                processor = TypingProcessor(settings, sink)
                with pytest.raises(KafkaError):
                    await processor.run(asyncio.Event())
                del processor
                gc.collect()
    assert [str(w.message) for w in caught if "AIOKafka" in str(w.message)] == []


async def test_a_restore_that_cannot_start_its_reader_leaves_no_client_open() -> None:
    """The restore's reader fails to start (the cluster down, or the restore cancelled as it
    starts): what it opened is closed, or every retry of the restore leaks a client."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(KafkaError):
            await read_changelog({"bootstrap_servers": "127.0.0.1:1"}, "changelog", 0)
        gc.collect()
    assert [str(w.message) for w in caught if "AIOKafka" in str(w.message)] == []


async def test_a_restore_keeps_only_what_survives_of_each_key(bootstrap_servers: str) -> None:
    """An uncompacted changelog holds every write: the read folds them as they come (the
    last per key wins, a tombstone deletes), so its memory follows the sessions."""
    topic = f"t{uuid.uuid4().hex[:10]}-changelog"
    async with AIOKafkaProducer(bootstrap_servers=bootstrap_servers) as producer:
        writes: list[tuple[bytes, bytes | None]] = [
            *((b"kept", f"v{n}".encode()) for n in range(500)),
            (b"deleted", b"v0"),
            (b"deleted", None),
            (b"back", b"v0"),
            (b"back", None),
            (b"back", b"v1"),
        ]
        for key, value in writes:
            await producer.send_and_wait(topic, value, key=key, partition=0)
    records = await read_changelog({"bootstrap_servers": bootstrap_servers}, topic, 0)
    assert records == [(b"kept", b"v499"), (b"back", b"v1")]


async def test_a_restore_reads_to_the_barrier_it_writes_as_it_begins(
    bootstrap_servers: str,
) -> None:
    """The read's end is a barrier, a tombstone written (acks=all) as the read begins: every
    record acknowledged before it precedes it, batched ones included, which the local
    broker's reported end leaves out but for a batch's first record. Its key is no session
    id, and its tombstone is folded as nothing. Each read writes a barrier of its own."""
    topic = f"t{uuid.uuid4().hex[:10]}-changelog"
    async with AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5) as producer:
        # one record batch of 10: the broker reports its end as 1 (its base offset + 1)
        sent = [
            await producer.send(topic, b"v", key=f"s{n}".encode(), partition=0) for n in range(10)
        ]
        await asyncio.gather(*sent)
    options = {"bootstrap_servers": bootstrap_servers}
    progress = RestoreProgress()
    records = await read_changelog(options, topic, 0, progress=progress)
    assert sorted(records) == sorted((f"s{n}".encode(), b"v") for n in range(10))
    assert (progress.end, progress.records, progress.remaining) == (11, 11, 0)
    written = await read_topic(bootstrap_servers, topic)
    assert [(r.offset, r.key, r.value) for r in written[10:]] == [(10, BARRIER_KEY, None)]
    assert re.match(SESSION_ID_PATTERN, BARRIER_KEY.decode()) is None
    again = RestoreProgress()
    assert sorted(await read_changelog(options, topic, 0, progress=again)) == sorted(records)
    assert again.end == 12


async def test_a_restore_stalled_by_a_silent_broker_reads_on_to_its_barrier(
    broker: LocalBroker,
) -> None:
    """The broker stops answering right after the barrier is acknowledged, most of the log
    still to read: fetches come back empty for many times their wait, and the read goes on
    until it is past the barrier once the broker answers again, every record restored (an
    empty fetch is no answer yet, not the end)."""
    bootstrap = broker.bootstrap_servers
    pid = broker.pid
    assert pid is not None
    topic = f"t{uuid.uuid4().hex[:10]}-changelog"
    count = 5_000  # 5 MiB: several fetches of 1 MiB, the most a fetch returns of a partition
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5) as producer:
        sent = [
            await producer.send(topic, b"v" * 1024, key=f"s{n}".encode(), partition=0)
            for n in range(count)
        ]
        await asyncio.gather(*sent)
        stopped = asyncio.Event()

        async def barrier_then_silence() -> int:
            written = await producer.send_and_wait(topic, None, key=BARRIER_KEY, partition=0)
            os.kill(pid, signal.SIGSTOP)
            stopped.set()
            return int(written.offset)

        progress = RestoreProgress()
        read = asyncio.create_task(
            read_changelog(
                {"bootstrap_servers": bootstrap},
                topic,
                0,
                write_barrier=barrier_then_silence,
                progress=progress,
            )
        )
        try:
            await eventually(stopped.is_set, 30, "the barrier written and the broker silent")
            # silent for five fetch waits: the read must not end meanwhile
            done, _ = await asyncio.wait({read}, timeout=5 * FETCH_WAIT_MS / 1000)
            assert not done, "the read ended while the broker said nothing"
            assert progress.remaining, "nothing was left to read when the broker went silent"
        finally:
            os.kill(pid, signal.SIGCONT)
        records = await asyncio.wait_for(read, 60)
    assert len(records) == count
    assert progress.remaining == 0


class UncommittingProcessor(TypingProcessor):
    """Commits only when the test calls `TypingProcessor.commit`: what it owns has no
    commit of this member yet, as right after an assignment."""

    async def commit(self) -> None:
        return


async def test_a_lease_renewal_whose_lookups_find_the_cluster_silent_ends_within_the_term(
    broker: LocalBroker, emulator: EmulatorHandle
) -> None:
    """A renewal for partitions this member has not committed yet looks up a safe offset
    first (the group's commit, else where reading starts); aiokafka retries those lookups
    for as long as the coordinator or the partition's leader does not answer. They are
    bounded as the commit is: else a silent cluster held the consume loop (no fetch, no
    check of the partitions, no other commit) until it answered again."""
    settings = make_settings(broker.bootstrap_servers, emulator, topic_partitions=1)
    pid = broker.pid
    assert pid is not None
    async with running(settings, UncommittingProcessor) as (processor, _):
        assert processor.lease.renewal_due()
        os.kill(pid, signal.SIGSTOP)
        renewal = asyncio.ensure_future(TypingProcessor.commit(processor))
        try:
            done, _ = await asyncio.wait({renewal}, timeout=LEASE_TERM_S + 2.0)
            assert done, f"the renewal still waits {LEASE_TERM_S + 2.0:.1f} s on"
        finally:
            os.kill(pid, signal.SIGCONT)
            renewal.cancel()
            await asyncio.gather(renewal, return_exceptions=True)
        assert renewal.result() is None  # gave up, to be tried again
        assert processor.lease.left() == 0


async def test_a_processor_restores_with_a_barrier_from_its_own_producer(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """Each partition's restore writes its barrier to its changelog partition."""
    settings = make_settings(bootstrap_servers, emulator, topic_partitions=2)
    async with running(settings, TypingProcessor):
        written = await read_topic(bootstrap_servers, settings.typing.resolved_changelog_topic)
    barriers = sorted(r.partition for r in written if r.key == BARRIER_KEY and r.value is None)
    assert barriers == [0, 1]


async def test_a_scheduler_that_stopped_stops_the_processor_and_says_why(
    bootstrap_servers: str, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing else plans the calls: a scheduler that died would leave every queued clear
    waiting for ever. The processor reports it and ends, to be restarted from its commit."""
    settings = make_settings(bootstrap_servers, emulator)
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    processor = TypingProcessor(settings, sink)

    def broken() -> tuple[int, bool]:
        raise RuntimeError("planner bug")

    monkeypatch.setattr(processor.scheduler, "plan_round", broken)
    stop = asyncio.Event()
    try:
        with pytest.raises(KafkaError, match="the scheduler stopped: RuntimeError"):
            await asyncio.wait_for(processor.run(stop), 60)
    finally:
        stop.set()
        await sink.aclose()


async def test_an_unconfirmed_member_writes_nothing_until_confirmed_again(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """While the group has not confirmed the member, another may own the partition: what
    the turns decide is held (no audit, CRM, changelog record); confirmed again, it is
    written in order."""
    settings = make_settings(bootstrap_servers, emulator)
    confirmed = False

    def unconfirmed() -> bool:
        return not confirmed

    async with standalone_worker(
        settings, emulator, [], held=unconfirmed, flush_interval_ms=100
    ) as alone:
        worker = alone.worker
        stale = typing_event("first", timeout_ms=1000, occurred_at=1_700_000_000_000)
        for offset, event in enumerate([stale, typing_event("second")]):
            session_id = event["session_id"]
            key, value = session_id.encode(), orjson.dumps(event)
            worker.submit(
                [ConsumerRecord(settings.typing.input_topic, 0, offset, 0, 0, key, value,
                                None, len(key), len(value), [])]
            )  # fmt: skip
            await eventually(
                lambda s=session_id: alone.store.session(s) is not None, 10, "processed"
            )
        assert worker.holding
        assert worker.counters.audit_records == 1  # "first" is stale: decided at once
        # counted by name (the telemetry and the demo's summary read plain strings)
        decisions = worker.counters.decisions
        assert [(type(name), name, n) for name, n in decisions.items()] == [(str, "stale", 1)]
        await worker.flush()
        assert await read_json(bootstrap_servers, settings.typing.audit_topic) == []
        assert await read_topic(bootstrap_servers, settings.typing.resolved_changelog_topic) == []
        assert worker.committable is None
        confirmed = True
        await eventually(lambda: worker.committable == 2, 10, "written and acknowledged")
        audits = await read_json(bootstrap_servers, settings.typing.audit_topic)
        assert [(a["session_id"], a["result"]) for a in audits] == [("first", "stale")]
        changelog = await read_topic(bootstrap_servers, settings.typing.resolved_changelog_topic)
        assert sorted(r.key for r in changelog) == [b"first", b"second"]


async def test_long_dead_letter_keys_are_partitioned_without_being_remembered(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """A flood of distinct long keys (a hostile producer's) must not fill the cache of
    partitions by key, which is for session ids; each letter is written all the same."""
    settings = make_settings(bootstrap_servers, emulator)
    typing = settings.typing
    await ensure_topics(settings.kafka, [TopicSpec(typing.dlq_topic)], 4, 1)
    outbound = Outbound(settings.kafka, typing)
    await outbound.start()
    try:
        batch = outbound.batch()
        for key in [b"s1", *(b"%04d" % n + b"k" * 1000 for n in range(50))]:
            batch.dead_letter(key, b"{}")
        acks = await batch.send()
        written = await asyncio.gather(*acks[typing.dlq_topic])
        assert written
        assert all(meta.topic == typing.dlq_topic for meta in written)
        assert list(await outbound._partitioner_for(typing.dlq_topic)) == [b"s1"]
    finally:
        await outbound.stop()


def test_a_topic_the_cluster_will_not_create_stops_start_up_with_its_reason() -> None:
    """The client returns CreateTopics' per-topic errors without raising them: left
    unread, a replication factor above the brokers there are was reported later as a topic
    that "does not exist (TYPING_CREATE_TOPICS is off)" while it was on."""
    raise_for_topic_errors([("a", 0, None), ("b", 36, "exists")])  # both there now
    with pytest.raises(
        TopicError,
        match=r"^cannot create topic c: InvalidReplicationFactorError \(3 > 1 brokers\)$",
    ):
        raise_for_topic_errors([("a", 0, None), ("c", 38, "3 > 1 brokers")])
    with pytest.raises(TopicError, match=r"^cannot create topic d: PolicyViolationError$"):
        raise_for_topic_errors([("d", 44)])  # (version 0 answers carry no message)
    with pytest.raises(KafkaError, match="RequestTimedOutError") as passing:
        raise_for_topic_errors([("e", 7, None)])
    assert not isinstance(passing.value, TopicError)  # asked again from the start


class ChangelogUnanswered(DeadLetterUnwritable):
    """Dead letters refused; changelog writes taken and acknowledged only once `answer` is
    set (a cluster that stopped answering, then came back)."""

    def __init__(self, kafka: KafkaSettings, typing: TypingSettings) -> None:
        super().__init__(kafka, typing)
        self.answer = asyncio.Event()

    async def _send(
        self, topic: str, partition: int, records: list[tuple[bytes | None, bytes | None, Headers]]
    ) -> list[asyncio.Future[Any]]:
        futures = await super()._send(topic, partition, records)
        if topic != self.changelog_topic:
            return futures
        return [asyncio.ensure_future(self._answered(future)) for future in futures]

    async def _answered(self, future: asyncio.Future[Any]) -> Any:
        await self.answer.wait()
        return await future


class UnansweredCloseProcessor(BrokenDlqProcessor):
    outbound = ChangelogUnanswered


async def test_a_restart_whose_release_timed_out_leaves_the_group_before_it_restarts(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """A partition stopped (its dead letter refused) and the release on the way out found
    the cluster not answering: the restart must not leave the consumer a member of the
    group. Left open, its heartbeats went on, and once the cluster answered it rejoined and
    kept its share of the partitions, read by nobody, from every other member (the
    restart's among them) until its poll interval ran out."""
    settings = make_settings(bootstrap_servers, emulator)
    emulator.create_session("kept")
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    failing = UnansweredCloseProcessor(settings, sink)
    outbound = failing._outbound
    assert isinstance(outbound, ChangelogUnanswered)
    other = TypingProcessor(settings, sink)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(failing.run(stop))]
    try:
        await eventually(lambda: failing.ready, 60, "processor ready")
        await produce(bootstrap_servers, settings.typing.input_topic, [record("kept")])
        await eventually(
            lambda: failing.workers[0].store.tracked_sessions == 1, 30, "the session tracked"
        )
        await produce(bootstrap_servers, settings.typing.input_topic, [(b"broken", b"{")])
        await eventually(tasks[0].done, 60, "the processor stopped")
        assert isinstance(tasks[0].exception(), KafkaError)
        outbound.answer.set()  # the cluster answers again
        tasks.append(asyncio.create_task(other.run(stop)))
        partitions = settings.typing.topic_partitions
        await eventually(
            lambda: other.ready and len(other.workers) == partitions,
            30,
            "the next member owns every partition",
        )
    finally:
        stop.set()
        outbound.answer.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sink.aclose()


async def test_a_restart_after_a_healthy_run_waits_the_first_backoff_again() -> None:
    """The backoff between restarts grows with failures in a row, not over the worker's
    life: a run that lasted `HEALTHY_RUN_S` before the cluster was lost restarts after the
    first backoff, however many blips there were before it."""
    now = 0.0
    waits: list[float] = []
    failures: list[str] = []
    stop = asyncio.Event()
    # how long each run lasts before the cluster is lost (the last one is stopped)
    runs = iter([0.0] * len(RESTART_BACKOFF_S) + [HEALTHY_RUN_S * 60, 0.0, HEALTHY_RUN_S])

    async def run() -> None:
        nonlocal now
        lasted = next(runs, None)
        if lasted is None:
            stop.set()
            return
        now += lasted
        raise KafkaError(f"lost after {lasted:.0f}s")

    async def wait(_: asyncio.Event, seconds: float) -> None:
        waits.append(seconds)

    await keep_running(
        run,
        stop,
        "processing",
        on_failure=lambda exc: failures.append(str(exc)),
        clock=lambda: now,
        wait=wait,
    )
    blips = list(RESTART_BACKOFF_S)
    assert waits == [*blips, RESTART_BACKOFF_S[0], RESTART_BACKOFF_S[1], RESTART_BACKOFF_S[0]]
    assert len(failures) == len(waits)
