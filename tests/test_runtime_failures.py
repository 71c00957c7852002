"""Failures inside the pipeline, on the real broker: a record that breaks processing is
dead-lettered (`processing_error`) and its partition goes on; a dead letter that cannot be
written stops the partition's commits, and nothing after it is skipped."""

from __future__ import annotations

import asyncio
import base64
import gc
import warnings
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from pipeline import eventually, make_settings, read_json, typing_event

from processor.clock import SystemClock
from processor.emulator.app import SESSION_PATH
from processor.emulator.testing import EmulatorHandle
from processor.models import TypingEvent
from processor.runtime.outbound import Headers, Outbound
from processor.runtime.partition import Counters, PartitionWorker
from processor.runtime.reconciler import Reconciler
from processor.runtime.restore import read_changelog
from processor.runtime.service import TypingProcessor
from processor.settings import Settings
from processor.sink.client import GenesysSink
from processor.sink.config import SinkConfig
from processor.state import EngineConfig, PartitionStore


class PoisonStore(PartitionStore):
    """A store with a bug that one event triggers (what no validation can foresee)."""

    def on_event(self, event: TypingEvent, offset: int) -> None:
        if event.event_id == "poison":
            raise RuntimeError("engine bug triggered by this event")
        super().on_event(event, offset)


class PoisonedProcessor(TypingProcessor):
    async def _restore(self, partition: int) -> PartitionStore:
        records = await read_changelog(
            self._options, self.settings.typing.resolved_changelog_topic, partition
        )
        return PoisonStore.restore(partition, self._engine, self._clock, records)


class DeadLetterUnwritable(Outbound):
    """A producer that cannot write to the DLQ (e.g. the topic is refused by the cluster)."""

    async def _send(
        self, topic: str, partition: int, records: list[tuple[bytes | None, bytes | None, Headers]]
    ) -> list[asyncio.Future[Any]]:
        if topic == self.typing.dlq_topic:
            raise KafkaError(f"cannot write to {topic}")
        return await super()._send(topic, partition, records)


class BrokenDlqProcessor(TypingProcessor):
    def __init__(self, settings: Settings, sink: GenesysSink) -> None:
        super().__init__(settings, sink)
        self._outbound = DeadLetterUnwritable(settings.kafka, settings.typing)


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> list[int]:
    async with AIOKafkaProducer(bootstrap_servers=bootstrap) as producer:
        offsets = []
        for key, value in records:
            meta = await producer.send_and_wait(topic, value, key=key, partition=0)
            offsets.append(meta.offset)
        return offsets


async def committed(bootstrap: str, settings: Settings, partition: int) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=settings.typing.group_id)
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(
            TopicPartition(settings.typing.input_topic, partition)
        )
        return offset
    finally:
        await consumer.stop()


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

        async def committed_past_both() -> bool:
            return (await committed(bootstrap_servers, settings, 0) or 0) > offsets[1]

        await eventually(committed_past_both, 30, "offsets committed past both records")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await sink.aclose()


async def test_an_unwritable_dead_letter_stops_the_partition_and_skips_nothing(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    settings = make_settings(bootstrap_servers, emulator)
    emulator.create_session("before")
    emulator.create_session("after")
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    processor = BrokenDlqProcessor(settings, sink)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        await eventually(lambda: processor.ready, 60, "processor ready")
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
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await sink.aclose()


class StuckRestoreProcessor(TypingProcessor):
    """A restore that does not finish until released (a long changelog, a slow broker)."""

    def __init__(self, settings: Settings, sink: GenesysSink) -> None:
        super().__init__(settings, sink)
        self.release_restore = asyncio.Event()

    async def _restore(self, partition: int) -> PartitionStore:
        await self.release_restore.wait()
        return await super()._restore(partition)


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
        # the rebalance listener waits for the restores it started: the stop must end them
        await asyncio.wait_for(task, 20)
        assert processor.workers == {}
    finally:
        stop.set()
        processor.release_restore.set()
        await asyncio.gather(task, return_exceptions=True)
        await sink.aclose()


async def test_a_fenced_partition_sends_nothing_and_gives_back_what_it_had_taken(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """A refused commit means another member may own the partition: a call taken but not
    sent yet never goes out, its budget comes back, and the store hears it was not sent."""
    settings = make_settings(bootstrap_servers, emulator)
    emulator.create_session("fenced")
    clock = SystemClock()
    store = PartitionStore(0, EngineConfig(), clock)
    store.on_event(TypingEvent.model_validate(typing_event("fenced", timeout_ms=30_000)), 0)
    outbound = Outbound(settings.kafka, settings.typing)
    await outbound.start()
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))

    async def restored() -> PartitionStore:
        return store

    worker = PartitionWorker(
        settings.typing.input_topic, 0, restored, outbound, Reconciler(sink, 4), clock, Counters()
    )
    try:
        await worker.restored.wait()
        assert worker.accepting
        work = store.take("fenced")
        assert work is not None
        level = sink.budget.level()
        sink.budget.spend(2)
        worker.launch(work, 2)
        worker.fence()  # before the worker's next turn could send it
        assert not worker.accepting
        await eventually(lambda: not store.is_in_flight("fenced"), 10, "the store heard back")
        assert store.is_backing_off("fenced") or store.is_queued("fenced")
        assert sink.budget.level() >= level - 0.01  # refunded
        assert emulator.count("PATCH", SESSION_PATH) == 0
        assert emulator.history("fenced") == []
    finally:
        await worker.close(1.0)
        await sink.aclose()
        await outbound.stop()


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
