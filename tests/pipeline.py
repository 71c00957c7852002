"""Test support for the runtime: a processor in this process or as `typing-processor run`,
events into the input topic, and reads of the outbound topics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.producer import message_accumulator
from aiokafka.producer import producer as producer_module
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record import default_records
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.record.util import calc_crc32c
from pydantic import SecretStr

from processor.emulator.testing import EmulatorHandle
from processor.logs import RepeatThrottle
from processor.models import DeadLetter, TypingEvent
from processor.runtime.kafka import raise_for_topic_errors
from processor.runtime.restore import read_changelog
from processor.runtime.service import TypingProcessor
from processor.settings import GenesysSettings, KafkaSettings, Settings, TypingSettings
from processor.sink.client import GenesysSink
from processor.sink.config import SinkConfig
from processor.state import PartitionStore


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def topic_env(prefix: str) -> dict[str, str]:
    """Unique topic and group names for one test, as `TYPING_*` variables."""
    return {
        "TYPING_GROUP_ID": f"{prefix}-group",
        "TYPING_INPUT_TOPIC": f"{prefix}.events",
        "TYPING_CRM_TOPIC": f"{prefix}.crm-sync",
        "TYPING_AUDIT_TOPIC": f"{prefix}.audit",
        "TYPING_DLQ_TOPIC": f"{prefix}.dlq",
        "TYPING_TOPIC_PARTITIONS": "4",
    }


def run_env(bootstrap: str, emulator: EmulatorHandle) -> dict[str, str]:
    """The environment of a `typing-processor run` child against the test stack."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "GENESYSCLOUD_OAUTHCLIENT_ID": emulator.client_id,
        "GENESYSCLOUD_OAUTHCLIENT_SECRET": emulator.client_secret,
        "GENESYSCLOUD_API_URL": emulator.base_url,
        "GENESYSCLOUD_LOGIN_URL": emulator.base_url,
        "TYPING_LOG_LEVEL": "INFO",
        "TYPING_HTTP_PORT": "0",
        **topic_env(unique_prefix()),
    }


# A configuration `run` and `crm-webhook` accept, whose cluster and endpoints are never
# reached: for what happens before they connect (start-up, early signals).
UNREACHED_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    "GENESYSCLOUD_OAUTHCLIENT_ID": "id",
    "GENESYSCLOUD_OAUTHCLIENT_SECRET": "secret",
    "TYPING_CRM_WEBHOOK_URL": "http://127.0.0.1:9/crm",
    "TYPING_HTTP_PORT": "0",
}


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def make_settings(bootstrap: str, emulator: EmulatorHandle, **typing: Any) -> Settings:
    names = {k.removeprefix("TYPING_").lower(): v for k, v in topic_env(unique_prefix()).items()}
    names.update(typing)
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap),
        genesys=GenesysSettings(
            oauthclient_id=emulator.client_id,
            oauthclient_secret=SecretStr(emulator.client_secret),
            api_url=emulator.base_url,
            login_url=emulator.base_url,
        ),
        typing=TypingSettings(**names),
    )


def typing_event(
    session_id: str, status: str = "typing", *, timeout_ms: int | None = None, **extra: Any
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": uuid.uuid4().hex,
        "session_id": session_id,
        "status": status,
        "occurred_at": now_ms(),
    }
    if timeout_ms is not None:
        event["timeout_ms"] = timeout_ms
    event.update(extra)
    return event


async def eventually(
    condition: Callable[[], bool] | Callable[[], Awaitable[bool]],
    timeout_s: float,
    what: str,
    interval_s: float = 0.05,
) -> None:
    """Re-check `condition` until it holds; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = condition()
        if isinstance(outcome, Awaitable):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(interval_s)


class Producer:
    """Sends events (dicts) or raw bytes to the input topic, acknowledged."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        self.topic = topic

    async def __aenter__(self) -> Producer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, event: dict[str, Any]) -> None:
        await self.send_raw(event["session_id"].encode(), orjson.dumps(event))

    async def send_raw(self, key: bytes | None, value: bytes | None) -> None:
        await self._producer.send_and_wait(self.topic, value, key=key)

    async def send_to(self, partition: int, key: bytes, value: bytes) -> None:
        await self._producer.send_and_wait(self.topic, value, key=key, partition=partition)


async def read_topic(
    bootstrap: str, topic: str, timeout_s: float = 5.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` up to its end offsets now, and any fetched beyond them.

    The local broker's high watermark can lag a record it has acknowledged until the
    partition is written again, so reading stops at an empty fetch past the end offsets,
    not at the end offsets themselves.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer.topics()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(timeout_s):
            while True:
                batch = await consumer.getmany(timeout_ms=100)
                fetched = [r for items in batch.values() for r in items]
                records.extend(fetched)
                positions = [await consumer.position(tp) for tp in tps]
                at_end = all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True))
                if at_end and not fetched:
                    return records
    finally:
        await consumer.stop()


async def create_topic(bootstrap: str, name: str, partitions: int, configs: dict[str, str]) -> None:
    """Create topic `name` with `configs` set explicitly, as one created out of band (the
    local broker describes only the configs a topic was created with)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        created = await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
        raise_for_topic_errors(created.topic_errors)
    finally:
        await admin.close()


async def group_state(bootstrap: str, group_id: str) -> str:
    """The state of consumer group `group_id` as the broker describes it: "Stable" once its
    members have their assignments. (The local broker says "Assigning" of a group forming
    with no leader yet and "Unknown" of one forming under a leader.)"""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group_id])
    finally:
        await admin.close()
    (described,) = response.groups
    return str(described[2])


async def committed(bootstrap: str, settings: Settings, partition: int) -> int | None:
    """The input offset the processor's group has committed for `partition`, if any."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=settings.typing.group_id)
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(
            TopicPartition(settings.typing.input_topic, partition)
        )
        return offset
    finally:
        await consumer.stop()


async def produce_batch(bootstrap: str, topic: str, partition: int, batch: bytes) -> int:
    """Write one record batch as it is, in a plain produce request; the offset the broker
    gave it. The local broker keeps what it is given (a control batch, a batch that fails
    its CRC) as it is."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client.add_topic(topic)
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = ProduceRequest(None, -1, 10_000, [(topic, [(partition, batch)])])
        response = await client.send(leader, request)
    finally:
        await client.close()
    ((_, [(_, error_code, offset, *_)]),) = response.topics
    assert error_code == 0, f"the batch was refused: error {error_code}"
    return int(offset)


def one_record_batch(key: bytes, value: bytes, *, producer_id: int = -1) -> bytearray:
    """A v2 batch of one record as a producer builds it (transactional with a producer id)."""
    builder = _DefaultRecordBatchBuilderPy(
        magic=2,
        compression_type=0,
        is_transactional=producer_id >= 0,
        producer_id=producer_id,
        producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=-1,
        batch_size=1 << 16,
    )
    builder.append(0, timestamp=now_ms(), key=key, value=value, headers=[])
    return bytearray(builder.build())


def with_crc(batch: bytearray) -> bytes:
    """`batch` with its CRC computed again, as a producer would have."""
    struct.pack_into(">I", batch, 17, calc_crc32c(memoryview(batch)[21:]))
    return bytes(batch)


async def write_transaction_marker(bootstrap: str, topic: str, partition: int) -> int:
    """Write the control batch that commits a transaction, as a transaction coordinator
    writes it; its offset. The local broker has no transactional producers (no
    coordinator), but takes the batch in a plain produce request, keeps it and serves it
    as a marker."""
    # key: version, type (1: commit); value: version, coordinator epoch
    marker = one_record_batch(struct.pack(">hh", 0, 1), bytes(6), producer_id=7)
    struct.pack_into(">h", marker, 21, 0x30)  # attributes: control, transactional
    return await produce_batch(bootstrap, topic, partition, with_crc(marker))


async def read_json(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in await read_topic(bootstrap, topic) if r.value]


async def read_dead_letters(bootstrap: str, topic: str) -> list[DeadLetter]:
    """Every dead letter on `topic`, in order."""
    return [
        DeadLetter.model_validate_json(r.value)
        for r in await read_topic(bootstrap, topic)
        if r.value is not None
    ]


async def publish(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    """Write `events` to `topic` in order, each keyed by its session id."""
    async with Producer(bootstrap, topic) as producer:
        for event in events:
            await producer.send(event)


class _Lines(logging.Handler):
    """Keeps the messages of the records it is given."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def throttled_lines(logger: str, clock: Callable[[], float]) -> Iterator[list[str]]:
    """The messages `logger` logs in the block, through the service's `RepeatThrottle`
    on `clock` (seconds)."""
    lines: list[str] = []
    handler = _Lines(lines)
    handler.addFilter(RepeatThrottle(clock=clock))
    logging.getLogger(logger).addHandler(handler)
    try:
        yield lines
    finally:
        logging.getLogger(logger).removeHandler(handler)


class Monotonic:
    """A monotonic clock (seconds) that moves only when a test sets `now`."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Skewed:
    """`time.monotonic`, moved ahead by `skew` seconds when the test says so."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skew


class BlockingRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Another member of the group whose revocation waits for `release`: within its long
    rebalance timeout, the group waits for it to rejoin, and no member is assigned."""

    def __init__(self) -> None:
        self.assigned = asyncio.Event()
        self.revoking = asyncio.Event()
        self.release = asyncio.Event()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if revoked:
            self.revoking.set()
            await self.release.wait()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.assigned.set()


@contextlib.asynccontextmanager
async def blocking_member(
    bootstrap_servers: str, group: str, topic: str
) -> AsyncIterator[BlockingRevoke]:
    """Another member of `group`, assigned `topic`'s partitions, whose revocation waits for
    its `release` (`BlockingRevoke`) within a 300 s rebalance timeout; released and gone
    on exit."""
    blocking = BlockingRevoke()
    other = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group, rebalance_timeout_ms=300_000
    )
    await other.start()
    try:
        other.subscribe([topic], listener=blocking)
        async with asyncio.timeout(60):
            await blocking.assigned.wait()
        yield blocking
    finally:
        blocking.release.set()
        await other.stop()


@dataclass
class InProcess:
    """A `TypingProcessor` running in this event loop."""

    settings: Settings
    processor: TypingProcessor
    sink: GenesysSink
    task: asyncio.Task[None]
    stop: asyncio.Event

    async def close(self) -> None:
        self.stop.set()
        try:
            await asyncio.wait_for(self.task, 15)
        finally:
            await self.sink.aclose()


async def start_in_process(
    settings: Settings,
    monotonic: Callable[[], float] = time.monotonic,
    on_applied: Callable[[str, int], None] | None = None,
) -> InProcess:
    """A processor running in this event loop, once assigned; `monotonic`: the clock its
    membership lease reads; `on_applied`: called with each change Genesys applied."""
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    processor = TypingProcessor(settings, sink, monotonic=monotonic, on_applied=on_applied)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    ready = asyncio.ensure_future(processor.wait_ready())
    await asyncio.wait({ready, task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if task.done():
        task.result()
    assert processor.ready, "processor was not assigned partitions within 60 s"
    return InProcess(settings, processor, sink, task, stop)


class RunProcess:
    """`python -m processor run` (or another `command`) as a child with its own environment."""

    def __init__(self, env: dict[str, str], log_path: Path, command: str = "run") -> None:
        self._env = {**os.environ, **env}
        self._log_path = log_path
        self._command = command
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self._log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "processor", self._command],
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def terminate(self, timeout_s: float = 15.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def log_text(self) -> str:
        return self._log_path.read_text(errors="replace")


async def announced_port(process: RunProcess, timeout_s: float = 30.0) -> int:
    """The port of a process's `/metrics`, `/healthz` and `/readyz`, once its log names it."""
    found: list[int] = []

    def announced() -> bool:
        match = re.search(r"/readyz on port (\d+)", process.log_text())
        if match:
            found.append(int(match.group(1)))
        return match is not None

    await eventually(announced, timeout_s, "the HTTP port in the log")
    return found[-1]


class NotUtf8(str):
    """A header key that encodes to bytes no UTF-8 decoder accepts."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe"


def allow_undecodable_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let this process's producers write a `NotUtf8` header key as a foreign producer
    could: the pure-Python batch builder encodes keys with `str.encode`."""
    for module in (message_accumulator, producer_module):
        monkeypatch.setattr(module, "DefaultRecordBatchBuilder", _DefaultRecordBatchBuilderPy)


async def send_with_bad_crc(bootstrap: str, topic: str, key: bytes, value: bytes) -> Any:
    """Write one record in a batch whose CRC does not match, as a faulty producer could
    (the broker keeps it as written); its metadata. Every producer of this process writes
    such batches meanwhile: call it while nothing else produces."""
    with pytest.MonkeyPatch.context() as patch:
        allow_undecodable_headers(patch)
        patch.setattr(default_records, "calc_crc32c", lambda data: 0)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            return await producer.send_and_wait(topic, value, key=key, partition=0)
        finally:
            await producer.stop()


@contextlib.asynccontextmanager
async def silent_listener() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A loopback port that takes connections and never answers (a hung broker or
    collector): its port, and an event set once a client has connected."""
    connected = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        await reader.read()  # never answers; reads until the client goes

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], connected
    finally:
        server.close()


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
