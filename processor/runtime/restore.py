"""Read one changelog partition from its beginning to its end (the restore source, I6)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


class RestoreError(Exception):
    """The changelog could not be read to its end."""


async def read_changelog(
    options: dict[str, Any], topic: str, partition: int, timeout_s: float = 120.0
) -> list[tuple[bytes, bytes | None]]:
    """Every (key, value) of `topic`/`partition` up to the end offset seen at the start.

    A separate, group-less consumer with manual assignment, so reading the changelog never
    disturbs the consumer group.
    """
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False, group_id=None)
    await consumer.start()
    records: list[tuple[bytes, bytes | None]] = []
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        await consumer.seek_to_beginning(tp)
        position = await consumer.position(tp)
        try:
            async with asyncio.timeout(timeout_s):
                while position < end:
                    batch = await consumer.getmany(tp, timeout_ms=500, max_records=10_000)
                    for record in batch.get(tp, []):
                        if record.offset >= end:
                            break
                        if record.key is not None:
                            records.append((record.key, record.value))
                    position = await consumer.position(tp)
        except TimeoutError:
            raise RestoreError(
                f"changelog {topic}[{partition}] not read to offset {end} in {timeout_s:.0f}s"
            ) from None
    finally:
        await consumer.stop()
    return records
