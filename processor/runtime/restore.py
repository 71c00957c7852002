"""Read one changelog partition from its beginning to its end (the restore source, I6)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

# How long the fetch that finds the end may wait for more.
END_PROBE_WAIT_MS = 200


class RestoreError(Exception):
    """The changelog could not be read to its end."""


async def read_changelog(
    options: dict[str, Any], topic: str, partition: int, timeout_s: float = 120.0
) -> list[tuple[bytes, bytes | None]]:
    """Every (key, value) of `topic`/`partition`, from its beginning to its real end.

    The end offset a broker reports can lag a record it has already acknowledged (the
    local broker does so): reading stops at the first empty fetch once that end is
    reached, not at the reported end, so the last change written is never left out.

    A separate, group-less consumer with manual assignment, so reading the changelog never
    disturbs the consumer group.
    """
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        **options,
        enable_auto_commit=False,
        group_id=None,
        # an empty fetch ends the read: do not let the broker hold it long
        fetch_max_wait_ms=END_PROBE_WAIT_MS,
    )
    await consumer.start()
    records: list[tuple[bytes, bytes | None]] = []
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        await consumer.seek_to_beginning(tp)
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    batch = await consumer.getmany(
                        tp, timeout_ms=END_PROBE_WAIT_MS, max_records=10_000
                    )
                    fetched = batch.get(tp, [])
                    for record in fetched:
                        if record.key is not None:
                            records.append((record.key, record.value))
                    if not fetched and await consumer.position(tp) >= end:
                        break
        except TimeoutError:
            raise RestoreError(
                f"changelog {topic}[{partition}] not read to its end in {timeout_s:.0f}s"
            ) from None
    finally:
        await consumer.stop()
    return records
