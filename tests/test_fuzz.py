"""Hostile input through the real pipeline: every record is dead-lettered at its source
position (original bytes, or for large ones a prefix with their size and SHA-256), and a
canary after them is processed on every partition, offsets committed past everything."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pipeline import (
    InProcess,
    eventually,
    make_settings,
    now_ms,
    read_json,
    start_in_process,
    typing_event,
)

from processor.emulator.testing import EmulatorHandle

PARTITIONS = 4
MAX_TEST_RECORD = 2 * 1024 * 1024


def event(session_id: str, **changes: Any) -> dict[str, Any]:
    document = typing_event(session_id, timeout_ms=30_000)
    document.update(changes)
    return document


def hostile_records(rng: random.Random) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) pairs no valid pipeline may accept, each kind once and some at random."""
    big = "x" * (64 * 1024)
    records: list[tuple[bytes | None, bytes | None]] = [
        (b"h1", b"{not json"),
        (b"h1", b"[1, 2, 3]"),
        (b"h1", b'"a string"'),
        (b"h1", b"null"),
        (b"h1", b""),
        (b"h1", None),  # a tombstone
        (None, orjson.dumps(event("h1"))),  # no key
        (b"other", orjson.dumps(event("h1"))),  # key differs from session_id
        (b"../x", orjson.dumps(event("../x"))),  # unsafe session id
        (b"h1", orjson.dumps({k: v for k, v in event("h1").items() if k != "status"})),
        (b"h1", orjson.dumps(event("h1", status="writing"))),
        (b"h1", orjson.dumps(event("h1", occurred_at="soon"))),
        (b"h1", orjson.dumps(event("h1", occurred_at=True))),
        (b"h1", orjson.dumps(event("h1", occurred_at=1.5))),
        (b"h1", orjson.dumps(event("h1", occurred_at=-1))),
        (b"h1", b'{"event_id":"e","session_id":"h1","status":"typing","occurred_at":%d}' % 2**63),
        (b"h1", b'{"event_id":"e","session_id":"h1","status":"typing","occurred_at":%d}' % 2**64),
        (b"h1", orjson.dumps(event("h1", timeout_ms=499))),
        (b"h1", orjson.dumps(event("h1", timeout_ms=10**30 // 10**12))),
        (b"h1", orjson.dumps(event("h1", event_id="e" * 200))),
        (b"h1", b'{"event_id":"\\ud800","session_id":"h1","status":"typing","occurred_at":1}'),
        (b"h1", orjson.dumps(event("h1", channel="\x00" * 300))),
        (b"h1", orjson.dumps(event("h1", target={"kind": "agent_typing"}))),
        (
            b"h1",
            orjson.dumps(
                event(
                    "h1",
                    target={
                        "kind": "agent_typing",
                        "conversation_id": "../../users",
                        "communication_id": "x",
                    },
                )
            ),
        ),
        (b"h1", orjson.dumps(event("h1", pad=big))),  # just over 64 KiB
        (b"h1", b"{" + b" " * (1024 * 1024) + b"}"),  # 1 MiB
        (b"h1", orjson.dumps(event("h1", pad="y" * (MAX_TEST_RECORD - 4096)))),  # ~2 MiB
        (b"k" * (1024 * 1024), orjson.dumps(event("h1"))),  # a 1 MiB key
    ]
    for _ in range(40):
        document = event("h1")
        field = rng.choice(["event_id", "session_id", "status", "occurred_at"])  # required
        document[field] = rng.choice([None, [], {}, 3.25, -(2**70), "", "\u2603" * 500, False])
        # the standard library writes what orjson refuses (integers past 64 bits)
        records.append((b"h1", json.dumps(document).encode()))
    return records


@pytest.fixture
async def stack(bootstrap_servers: str, emulator: EmulatorHandle) -> AsyncIterator[InProcess]:
    settings = make_settings(bootstrap_servers, emulator, topic_partitions=PARTITIONS)
    running = await start_in_process(settings)
    try:
        yield running
    finally:
        await running.close()


async def test_hostile_records_are_dead_lettered_and_canaries_pass(
    bootstrap_servers: str, emulator: EmulatorHandle, stack: InProcess
) -> None:
    typing = stack.settings.typing
    rng = random.Random(20261125)
    records = hostile_records(rng)
    sent: dict[tuple[int, int], tuple[bytes | None, bytes | None]] = {}
    canaries = {partition: f"canary-{partition}" for partition in range(PARTITIONS)}
    for session_id in canaries.values():
        emulator.create_session(session_id)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, max_request_size=MAX_TEST_RECORD + 1024 * 1024
    )
    await producer.start()
    try:
        for index, (key, value) in enumerate(records):
            partition = index % PARTITIONS
            meta = await producer.send_and_wait(
                typing.input_topic, value, key=key, partition=partition
            )
            sent[partition, meta.offset] = (key, value)
        for partition, session_id in canaries.items():
            canary = typing_event(session_id, timeout_ms=30_000)
            canary["occurred_at"] = now_ms()
            await producer.send_and_wait(
                typing.input_topic,
                orjson.dumps(canary),
                key=session_id.encode(),
                partition=partition,
            )
    finally:
        await producer.stop()

    # every canary is processed, so every hostile record before it was handled
    await eventually(
        lambda: all(
            emulator.session(s)["customAttributes"].get("typingIndicator") is not None
            for s in canaries.values()
        ),
        90,
        "every canary's indicator set",
    )
    letters = await read_json(bootstrap_servers, typing.dlq_topic)
    by_position = {(letter["partition"], letter["offset"]): letter for letter in letters}
    assert set(by_position) == set(sent), "one dead letter per hostile record, no more"
    for position, (key, value) in sent.items():
        letter = by_position[position]
        assert letter["topic"] == typing.input_topic
        assert letter["reason"]
        for name, original in (("key", key), ("value", value)):
            encoded = letter[f"{name}_b64"]
            if original is None:
                assert encoded is None
                continue
            kept = base64.b64decode(encoded)
            if letter.get(f"{name}_size") is not None and letter[f"{name}_size"] != len(kept):
                # a large one: a prefix, and the size and digest of the whole
                assert letter["truncated"] is True
                assert letter[f"{name}_size"] == len(original)
                assert letter[f"{name}_sha256"] == hashlib.sha256(original).hexdigest()
                assert original.startswith(kept)
            else:
                assert kept == original, f"{name} bytes at {position} not kept"
    audits = await read_json(bootstrap_servers, typing.audit_topic)
    audited = {a["session_id"] for a in audits if a["result"] == "applied"}
    assert set(canaries.values()) <= audited

    # the group's committed offsets move past every record
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=typing.group_id)
    await consumer.start()
    try:
        ends = {
            partition: 1 + max(offset for p, offset in sent if p == partition)
            for partition in range(PARTITIONS)
        }

        async def committed_past_all() -> bool:
            for partition, end in ends.items():
                offset = await consumer.committed(TopicPartition(typing.input_topic, partition))
                if offset is None or offset <= end:  # the canary follows the last one
                    return False
            return True

        await eventually(committed_past_all, 30, "offsets committed past every record")
    finally:
        await consumer.stop()
