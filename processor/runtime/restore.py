"""Read one changelog partition from its beginning to its end (the restore source, I6)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError

from processor.state.changelog import ChangelogError

# The key of the barrier that marks where a read ends. No session id can be it (they match
# ^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$), and it is a tombstone: a key no store holds, which
# every reader, this release's and the ones before it, folds as nothing. Compaction keeps
# one per partition (the latest).
BARRIER_KEY = b"~restore-barrier"
# How long the broker may hold a fetch that finds nothing yet (some answer only at this
# deadline): the read goes on until the barrier whatever the fetches find.
FETCH_WAIT_MS = 200

WriteBarrier = Callable[[], Awaitable[int]]
"""Writes the barrier to the partition being read; its offset once acknowledged (acks=all)."""


class RestoreError(Exception):
    """The changelog could not be read to its end."""


@dataclass(slots=True)
class RestoreProgress:
    """How far the read of one changelog partition has come (readiness and metrics)."""

    records: int = 0
    """Changelog records read so far (superseded values and tombstones included)."""
    position: int = 0
    """Offset of the next record to read."""
    end: int | None = None
    """Offset after the barrier (where the read ends), once it is written."""

    @property
    def remaining(self) -> int | None:
        """Offsets left before `end` (None while it is not known)."""
        return None if self.end is None else max(0, self.end - self.position)


async def read_changelog(
    options: dict[str, Any],
    topic: str,
    partition: int,
    stall_s: float = 60.0,
    *,
    write_barrier: WriteBarrier | None = None,
    progress: RestoreProgress | None = None,
) -> list[tuple[bytes, bytes | None]]:
    """The latest (key, value) of every key of `topic`/`partition` that a tombstone has not
    deleted, read from its beginning to its real end.

    The end is a barrier written to the partition as the read begins (`write_barrier`;
    by default a producer of its own writes it): its acknowledgement (acks=all) proves that
    every record acknowledged before it precedes it in the log, so the read goes on until
    it is past the barrier. Neither the end offset a broker reports (which can lag a record
    it has already acknowledged, as the local broker's does) nor an empty fetch (which on a
    loaded host may only mean no answer yet) decides it: the last change written is never
    left out.

    Records are folded as they come (the last per key wins, a tombstone deletes), so the
    memory a restore takes follows the sessions, not the log's uncompacted tail. The read
    may take as long as the log needs; it fails once `stall_s` pass without a record (the
    barrier's write included).

    A batch the client cannot decode (its CRC does not match, or it names a codec the
    client lacks) raises `ChangelogError`: reading it again meets the same bytes, and
    restoring past it would forget what it holds.

    A separate, group-less consumer with manual assignment, so reading the changelog never
    disturbs the consumer group. `progress`, when given, is kept up to date as the read
    goes (it starts over with a read that starts over).
    """
    if write_barrier is None:
        write_barrier = functools.partial(_write_barrier, options, topic, partition)
    if progress is None:
        progress = RestoreProgress()
    progress.records, progress.position, progress.end = 0, 0, None
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        **options,
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=FETCH_WAIT_MS,
        # a log start that moves under the read (retention, deleted records) restarts it
        # at the new start; the default ("latest") would skip to the end and restore nothing
        auto_offset_reset="earliest",
    )
    latest: dict[bytes, bytes | None] = {}
    try:
        # inside: a restore cancelled while the client starts (a revocation, a stop) must
        # close what it opened
        await consumer.start()
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        loop = asyncio.get_running_loop()
        read_at = loop.time()
        end: int | None = None
        while end is None or progress.position < end:
            try:
                async with asyncio.timeout(max(0.0, read_at + stall_s - loop.time())):
                    if end is None:  # (a barrier never acknowledged stalls the read)
                        end = progress.end = await write_barrier() + 1
                    batch = await consumer.getmany(tp, timeout_ms=FETCH_WAIT_MS, max_records=10_000)
                    fetched = batch.get(tp, [])
                    progress.position = await consumer.position(tp)
            except TimeoutError:
                raise RestoreError(
                    f"changelog {topic}[{partition}] read no record for {stall_s:.0f}s"
                    " before its end"
                ) from None
            except (CorruptRecordException, UnsupportedCodecError) as exc:
                # Kafka's errors, yet no retry can help: the broker keeps the bytes as written
                raise ChangelogError(
                    f"changelog {topic}[{partition}] cannot be read: {exc}"
                ) from None
            if fetched:
                read_at = loop.time()
                progress.records += len(fetched)
            for record in fetched:
                key = record.key
                if key is None:
                    continue
                if record.value is None:
                    latest.pop(key, None)
                else:
                    latest[key] = record.value
    finally:
        await consumer.stop()
    return list(latest.items())


async def _write_barrier(options: dict[str, Any], topic: str, partition: int) -> int:
    """The barrier written by a producer of its own (a caller without one at hand)."""
    async with AIOKafkaProducer(**options, acks="all") as producer:
        written = await producer.send_and_wait(topic, None, key=BARRIER_KEY, partition=partition)
    return int(written.offset)
