"""Everything the processor writes: changelog, CRM sync, audit, DLQ (and the audit file).

Records of one processing turn are collected in an `OutboundBatch` and handed to the
producer as one record batch per topic partition (aiokafka's batch API): one future per
batch instead of one `send` and one future per record, which is most of what producing
costs in Python.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import IO, Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from processor.settings import ConfigError, KafkaSettings, TypingSettings

from .kafka import client_options
from .restore import BARRIER_KEY

Headers = list[tuple[str, bytes]]
# A record to produce: key, value and headers (None: none; the batch API takes None so).
Record = tuple[bytes | None, bytes | None, Headers | None]
# Larger batches than aiokafka's 16 KiB default: a turn's audit records go in a few.
MAX_BATCH_BYTES = 256 * 1024
MAX_CACHED_KEYS = 200_000
# The longest key worth remembering: a session id. A dead letter's key may be far longer
# (a hostile producer's), and a flood of distinct ones would fill the cache with MBs.
MAX_CACHED_KEY_BYTES = 128


def open_audit_file(path: Path) -> IO[bytes]:
    """`path` opened for appending, its folder created; raises `ConfigError` naming
    `TYPING_AUDIT_LOG_FILE` when it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("ab")
    except OSError as exc:
        # no restart makes a missing volume or a read-only path writable
        raise ConfigError(
            f"TYPING_AUDIT_LOG_FILE is invalid: cannot write {path} ({exc.strerror})"
        ) from None


def check_audit_log_file(typing: TypingSettings) -> None:
    """Raise `ConfigError` when the configured audit file cannot be written.

    `run` calls it before anything touches Kafka: `Outbound.start` opens the file only once
    the topics are ready, and with the cluster down `run` would retry that for ever instead.
    """
    if typing.audit_log_file is not None:
        open_audit_file(typing.audit_log_file).close()


class Outbound:
    """One producer for every outbound topic.

    Changelog records go to the partition of the input record they came from, so a
    partition's store is restored from exactly one changelog partition; the others are
    partitioned by key as the default partitioner does.
    """

    def __init__(self, kafka: KafkaSettings, typing: TypingSettings) -> None:
        self._kafka = kafka
        # made by `start`: a client made and never started or stopped (a processor built
        # and dropped) is reported unclosed when it is collected
        self._client: AIOKafkaProducer | None = None
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[str, list[int]] = {}
        self._by_key: dict[str, dict[bytes, int]] = {}
        self.typing = typing
        self.changelog_topic = typing.resolved_changelog_topic
        self._audit_file: IO[bytes] | None = None

    async def start(self) -> None:
        """Connect the producer and open the audit file, if configured."""
        kafka = self._kafka
        self._client = AIOKafkaProducer(
            **client_options(kafka),
            client_id=f"{kafka.client_id}-producer",
            acks="all",
            enable_idempotence=kafka.enable_idempotence,
            linger_ms=5,
            max_batch_size=MAX_BATCH_BYTES,
            compression_type=None,
        )
        await self._client.start()
        path = self.typing.audit_log_file
        if path is not None:
            try:
                self._audit_file = open_audit_file(path)
            except ConfigError:
                await self._client.stop()
                raise

    @property
    def _producer(self) -> AIOKafkaProducer:
        if self._client is None:
            raise RuntimeError("the outbound producer is not started")
        return self._client

    async def stop(self) -> None:
        """Flush and close."""
        if self._client is not None:
            await self._client.flush()
            await self._client.stop()
        if self._audit_file is not None:
            self._audit_file.close()
            self._audit_file = None

    async def barrier(self, partition: int) -> int:
        """Write the barrier that ends a restore's read to changelog `partition` (see
        `restore.read_changelog`); its offset once acknowledged by every replica (acks=all).

        Written even while the group has not confirmed this member lately (while
        `PartitionWorker.holding`): a tombstone of a key no session has overwrites no
        owner's state.
        """
        written = await self._producer.send_and_wait(
            self.changelog_topic, None, key=BARRIER_KEY, partition=partition
        )
        return int(written.offset)

    def batch(self) -> OutboundBatch:
        """An empty batch of records to send together."""
        return OutboundBatch(self)

    async def _partitioner_for(self, topic: str) -> dict[bytes, int]:
        """Partition by key for `topic` (cached: the same sessions come back all the time)."""
        cache = self._by_key.get(topic)
        if cache is None or len(cache) > MAX_CACHED_KEYS:
            if topic not in self._partitions:
                self._partitions[topic] = sorted(await self._producer.partitions_for(topic))
            cache = self._by_key[topic] = {}
        return cache

    def _partition(self, topic: str, key: bytes) -> int:
        partitions = self._partitions[topic]
        partition: int = self._partitioner(key, partitions, partitions)
        return partition

    async def _send(
        self, topic: str, partition: int, records: list[Record]
    ) -> list[asyncio.Future[Any]]:
        futures: list[asyncio.Future[Any]] = []
        producer = self._producer
        builder = producer.create_batch()
        for key, value, headers in records:
            if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                if builder.record_count():
                    builder.close()
                    futures.append(await producer.send_batch(builder, topic, partition=partition))
                    builder = producer.create_batch()
                if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                    # larger than a batch on its own: the plain path sizes it
                    futures.append(
                        await producer.send(
                            topic, value, key=key, partition=partition, headers=headers
                        )
                    )
        if builder.record_count():
            builder.close()
            futures.append(await producer.send_batch(builder, topic, partition=partition))
        return futures

    def write_audit_lines(self, lines: list[bytes]) -> None:
        """Append audit records to the audit file, if one is configured (one write)."""
        if self._audit_file is not None and lines:
            self._audit_file.write(b"\n".join(lines) + b"\n")
            self._audit_file.flush()


class OutboundBatch:
    """Records to send together; `send` hands them to the producer in record batches."""

    def __init__(self, outbound: Outbound) -> None:
        self._outbound = outbound
        self._typing = outbound.typing
        # (topic, partition or None) -> records in order
        self._records: dict[tuple[str, int | None], list[Record]] = {}
        # one audit record per event: its list is looked up once per batch, not per record
        self._audits: list[Record] | None = None
        self._audit_lines: list[bytes] = []

    def __len__(self) -> int:
        return sum(len(records) for records in self._records.values())

    def _add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None,
        partition: int | None = None,
    ) -> None:
        bucket = self._records.get((topic, partition))
        if bucket is None:
            bucket = self._records[topic, partition] = []
        bucket.append((key, value, headers))

    def changelog(self, partition: int, key: bytes, value: bytes | None) -> None:
        """A state record (None = tombstone) for the store of `partition`."""
        self._add(self._outbound.changelog_topic, key, value, None, partition)

    def crm(self, key: bytes, value: bytes, headers: Headers | None = None) -> None:
        """One applied change, for the CRM webhook worker."""
        self._add(self._typing.crm_topic, key, value, headers)

    def audit(self, key: bytes, value: bytes, headers: Headers | None = None) -> None:
        """One decision; also appended to the audit file when one is configured."""
        audits = self._audits
        if audits is None:
            audits = self._audits = self._records.setdefault((self._typing.audit_topic, None), [])
        audits.append((key, value, headers))
        self._audit_lines.append(value)

    def dead_letter(self, key: bytes | None, value: bytes, headers: Headers | None = None) -> None:
        """A rejected input record (its key bounded by the dead letter's `record_key`)."""
        self._add(self._typing.dlq_topic, key, value, headers)

    async def send(self) -> dict[str, list[asyncio.Future[Any]]]:
        """Hand every record to the producer; futures of their acknowledgements by topic.

        Records of one topic partition keep their order. Raises what the producer raises
        when a record cannot be queued at all.
        """
        outbound = self._outbound
        grouped: dict[tuple[str, int], list[Record]] = {}
        for (topic, partition), records in self._records.items():
            if partition is not None:
                grouped.setdefault((topic, partition), []).extend(records)
                continue
            cache = await outbound._partitioner_for(topic)
            # partition -> records, first seen first: no key tuple or list made per record
            by_partition: dict[int, list[Record]] = {}
            for record in records:
                key = record[0] or b""
                chosen = cache.get(key)
                if chosen is None:
                    chosen = outbound._partition(topic, key)
                    if len(key) <= MAX_CACHED_KEY_BYTES:
                        cache[key] = chosen
                bucket = by_partition.get(chosen)
                if bucket is None:
                    bucket = by_partition[chosen] = []
                bucket.append(record)
            for chosen, bucket in by_partition.items():
                grouped.setdefault((topic, chosen), []).extend(bucket)
        futures: dict[str, list[asyncio.Future[Any]]] = {}
        for (topic, partition), records in grouped.items():
            futures.setdefault(topic, []).extend(await outbound._send(topic, partition, records))
        outbound.write_audit_lines(self._audit_lines)
        self._records = {}
        self._audits = None
        self._audit_lines = []
        return futures
