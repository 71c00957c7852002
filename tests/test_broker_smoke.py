"""Typing events travel through the real broker and decode with the payload models."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from processor.codec import decode_event
from processor.domain import Status
from processor.models import TypingEvent


async def test_events_round_trip_through_a_consumer_group(bootstrap_servers: str) -> None:
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    sent = [
        TypingEvent(
            event_id=f"e{i}",
            session_id=f"s{i % 3}",
            status=Status.TYPING if i % 2 else Status.PAUSED,
            occurred_at=1_700_000_000_000 + i,
        )
        for i in range(12)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        for event in sent:
            await producer.send_and_wait(topic, event.to_bytes(), key=event.session_id.encode())
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=f"smoke-group-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[TypingEvent] = []
    try:
        async with asyncio.timeout(30):
            while len(received) < len(sent):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        decoded = decode_event(
                            record.key,
                            record.value,
                            topic=record.topic,
                            partition=record.partition,
                            offset=record.offset,
                            now_ms=1_700_000_000_000,
                        )
                        assert isinstance(decoded, TypingEvent), decoded
                        received.append(decoded)
        await consumer.commit()
    finally:
        await consumer.stop()

    assert sorted(received, key=lambda e: e.event_id) == sorted(sent, key=lambda e: e.event_id)
