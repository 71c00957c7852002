"""Read one changelog partition from its beginning to its end (the restore source, I6)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError

from processor.state.changelog import ChangelogError

# How long the fetch that finds the end may wait for more.
END_PROBE_WAIT_MS = 200


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
    """Offset the read goes at least to, once known."""

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
    progress: RestoreProgress | None = None,
) -> list[tuple[bytes, bytes | None]]:
    """The latest (key, value) of every key of `topic`/`partition` that a tombstone has not
    deleted, read from its beginning to its real end.

    The end offset a broker reports can lag a record it has already acknowledged (the
    local broker does so): reading stops at the first empty fetch once that end is
    reached, not at the reported end, so the last change written is never left out.

    Records are folded as they come (the last per key wins, a tombstone deletes), so the
    memory a restore takes follows the sessions, not the log's uncompacted tail. The read
    may take as long as the log needs; it fails once `stall_s` pass without a record.

    A batch the client cannot decode (its CRC does not match, or it names a codec the
    client lacks) raises `ChangelogError`: reading it again meets the same bytes, and
    restoring past it would forget what it holds.

    A separate, group-less consumer with manual assignment, so reading the changelog never
    disturbs the consumer group. `progress`, when given, is kept up to date as the read
    goes (it starts over with a read that starts over).
    """
    if progress is None:
        progress = RestoreProgress()
    progress.records, progress.position, progress.end = 0, 0, None
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        **options,
        enable_auto_commit=False,
        group_id=None,
        # an empty fetch ends the read: do not let the broker hold it long
        fetch_max_wait_ms=END_PROBE_WAIT_MS,
        # a log start that moves under the read (retention, deleted records) restarts it
        # at the new start; the default ("latest") would skip to the end and restore nothing
        auto_offset_reset="earliest",
    )
    await consumer.start()
    latest: dict[bytes, bytes | None] = {}
    try:
        consumer.assign([tp])
        end = progress.end = (await consumer.end_offsets([tp]))[tp]
        await consumer.seek_to_beginning(tp)
        loop = asyncio.get_running_loop()
        read_at = loop.time()
        while True:
            try:
                async with asyncio.timeout(max(0.0, read_at + stall_s - loop.time())):
                    batch = await consumer.getmany(
                        tp, timeout_ms=END_PROBE_WAIT_MS, max_records=10_000
                    )
                    fetched = batch.get(tp, [])
                    position = progress.position = await consumer.position(tp)
                    reached = not fetched and position >= end
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
            if reached:
                break
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
