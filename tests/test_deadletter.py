"""A dead letter always fits on the DLQ topic and describes the original bytes exactly."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import uuid

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.codec import decode_event
from processor.deadletter import build_dead_letter
from processor.models import (
    DLQ_HEADERS_KEEP_BYTES,
    DLQ_KEY_KEEP_BYTES,
    DLQ_VALUE_KEEP_BYTES,
    MAX_DETAIL_CHARS,
    MAX_DLQ_RECORD_BYTES,
    DeadLetter,
    DeadLetterHeader,
    DlqReason,
    TimestampType,
)

NOW = 1_700_000_000_000
MIB = 1024 * 1024
KAFKA_MAX_REQUEST_SIZE = 1_048_576  # aiokafka's default max_request_size


def record_bytes(letter: DeadLetter) -> int:
    return len(letter.to_bytes()) + len(letter.record_key() or b"")


def assert_describes(
    kept_b64: str | None, size: int | None, sha: str | None, data: bytes | None, limit: int
) -> None:
    if data is None:
        assert (kept_b64, size, sha) == (None, None, None)
        return
    kept = base64.b64decode(kept_b64 or "")
    assert kept == data[:limit]
    assert size == len(data)
    assert sha == hashlib.sha256(data).hexdigest()


def big_bytes(max_size: int) -> st.SearchStrategy[bytes]:
    """Sizes across the whole range, with the limits themselves and their neighbours."""
    sizes = st.integers(0, max_size) | st.sampled_from(
        [
            DLQ_KEY_KEEP_BYTES - 1,
            DLQ_KEY_KEEP_BYTES,
            DLQ_KEY_KEEP_BYTES + 1,
            DLQ_VALUE_KEEP_BYTES - 1,
            DLQ_VALUE_KEEP_BYTES,
            DLQ_VALUE_KEEP_BYTES + 1,
            max_size,
        ]
    )
    random_bytes = st.builds(
        lambda n, seed: random.Random(seed).randbytes(n), sizes, st.integers(0, 2**32)
    )
    return st.binary(max_size=64) | random_bytes


# worst cases for the JSON encoding of text: control characters (6 bytes each), 4-byte
# characters, lone surrogates (not encodable as UTF-8)
nasty_text = st.text(
    alphabet=st.sampled_from(["\x00", "\x1f", '"', "\\", "\U0001f600", "\ud800", "a", "é"]),
    max_size=3 * MAX_DETAIL_CHARS,
)


def header_sizes() -> st.SearchStrategy[bytes | None]:
    sizes = st.integers(0, 2 * DLQ_HEADERS_KEEP_BYTES) | st.sampled_from(
        [DLQ_HEADERS_KEEP_BYTES // 2, DLQ_HEADERS_KEEP_BYTES, 256 * 1024]
    )
    return st.none() | st.binary(max_size=64) | st.builds(lambda n: b"\x00" * n, sizes)


# many small headers, a few huge ones, keys the JSON encoding blows up
record_headers = st.lists(
    st.tuples(nasty_text | st.just("traceparent"), header_sizes()), max_size=40
) | st.lists(st.tuples(st.just("\x00" * 64), st.binary(max_size=16)), max_size=2000)


def assert_keeps_headers(letter: DeadLetter, headers: list[tuple[str, bytes | None]]) -> None:
    """The letter keeps a prefix of `headers` (keys as UTF-8 JSON can hold them), and says
    whether that is all of them."""
    kept = len(letter.headers)
    assert [(h.key, h.value_b64) for h in letter.headers] == [
        (
            key.encode("utf-8", "replace").decode("utf-8"),
            None if value is None else base64.b64encode(value).decode(),
        )
        for key, value in headers[:kept]
    ]
    assert letter.header_count == len(headers)
    assert letter.headers_truncated is (kept < len(headers))
    assert len(orjson.dumps([h.model_dump(mode="json") for h in letter.headers])) <= (
        DLQ_HEADERS_KEEP_BYTES
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.none() | big_bytes(2 * MIB),
    value=st.none() | big_bytes(2 * MIB),
    detail=nasty_text,
    topic=st.text(max_size=300) | st.just("genesys.typing.events"),
    reason=st.sampled_from(list(DlqReason)),
    headers=record_headers,
    timestamp=st.none() | st.integers(-(2**63), 2**63 - 1),
)
def test_any_record_up_to_2_mib_gives_a_letter_that_fits(
    key: bytes | None,
    value: bytes | None,
    detail: str,
    topic: str,
    reason: DlqReason,
    headers: list[tuple[str, bytes | None]],
    timestamp: int | None,
) -> None:
    letter = build_dead_letter(
        reason,
        detail,
        key,
        value,
        topic=topic,
        partition=2**31 - 1,
        offset=2**63 - 1,
        now_ms=NOW,
        record_timestamp=timestamp,
        record_timestamp_type=None if timestamp is None else TimestampType.LOG_APPEND_TIME,
        headers=headers,
    )
    assert record_bytes(letter) <= MAX_DLQ_RECORD_BYTES
    assert_keeps_headers(letter, headers)
    assert letter.record_timestamp == timestamp
    assert_describes(letter.key_b64, letter.key_size, letter.key_sha256, key, DLQ_KEY_KEEP_BYTES)
    assert_describes(
        letter.value_b64, letter.value_size, letter.value_sha256, value, DLQ_VALUE_KEEP_BYTES
    )
    cut = (key is not None and len(key) > DLQ_KEY_KEEP_BYTES) or (
        value is not None and len(value) > DLQ_VALUE_KEEP_BYTES
    )
    assert letter.truncated is cut
    assert letter.record_key() == (None if key is None else key[:DLQ_KEY_KEEP_BYTES])
    assert len(letter.detail) == min(len(detail), MAX_DETAIL_CHARS)
    # what goes on the wire is a valid dead letter again
    assert DeadLetter.model_validate_json(letter.to_bytes()) == letter


def test_small_records_are_kept_whole() -> None:
    letter = build_dead_letter(
        DlqReason.PROCESSING_ERROR,
        "boom",
        b"sess-1",
        b"{}",
        topic="in",
        partition=0,
        offset=5,
        now_ms=NOW,
    )
    assert orjson.loads(letter.to_bytes()) == {
        "reason": "processing_error",
        "detail": "boom",
        "topic": "in",
        "partition": 0,
        "offset": 5,
        "key_b64": base64.b64encode(b"sess-1").decode(),
        "value_b64": base64.b64encode(b"{}").decode(),
        "timestamp": "2023-11-14T22:13:20.000+00:00",
        "key_size": 6,
        "key_sha256": hashlib.sha256(b"sess-1").hexdigest(),
        "value_size": 2,
        "value_sha256": hashlib.sha256(b"{}").hexdigest(),
        "truncated": False,
        "record_timestamp": None,
        "record_timestamp_type": None,
        "headers": [],
        "header_count": 0,
        "headers_truncated": False,
    }


def test_the_records_timestamp_and_headers_are_kept_for_a_replay() -> None:
    traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    letter = build_dead_letter(
        DlqReason.INVALID_JSON,
        "bad",
        b"k",
        b"{",
        topic="in",
        partition=0,
        offset=5,
        now_ms=NOW,
        record_timestamp=NOW - 60_000,
        record_timestamp_type=TimestampType.CREATE_TIME,
        headers=[("traceparent", traceparent), ("empty", None)],
    )
    assert orjson.loads(letter.to_bytes())["headers"] == [
        {"key": "traceparent", "value_b64": base64.b64encode(traceparent).decode()},
        {"key": "empty", "value_b64": None},
    ]
    assert (letter.record_timestamp, letter.record_timestamp_type) == (
        NOW - 60_000,
        TimestampType.CREATE_TIME,
    )
    assert (letter.header_count, letter.headers_truncated, letter.truncated) == (2, False, False)


def test_headers_beyond_the_limit_are_left_out_and_flagged() -> None:
    big = b"x" * (DLQ_HEADERS_KEEP_BYTES * 3 // 4)  # within the limit, not in base64
    letter = build_dead_letter(
        DlqReason.INVALID_JSON,
        "bad",
        b"k",
        b"{",
        topic="in",
        partition=0,
        offset=5,
        now_ms=NOW,
        headers=[("a", b"1"), ("b", big), ("c", b"3")],
    )
    assert letter.headers == (DeadLetterHeader(key="a", value_b64="MQ=="),)
    assert (letter.header_count, letter.headers_truncated) == (3, True)
    assert not letter.truncated  # key and value were kept whole


def test_an_oversize_input_gives_a_truncated_letter() -> None:
    value = b'{"event_id":"' + b"x" * MIB + b'"}'
    letter = decode_event(b"k" * 2 * MIB, value, topic="in", partition=1, offset=9, now_ms=NOW)
    assert isinstance(letter, DeadLetter)
    assert letter.reason is DlqReason.OVERSIZE
    assert letter.truncated
    assert (letter.key_size, letter.value_size) == (2 * MIB, len(value))
    assert record_bytes(letter) <= MAX_DLQ_RECORD_BYTES


async def test_a_letter_of_a_huge_record_goes_through_a_default_producer(
    bootstrap_servers: str,
) -> None:
    """A 2 MiB key and value once gave a dead letter the producer refused (over 1 MiB)."""
    topic = f"dlq-{uuid.uuid4().hex[:8]}"
    key = random.Random(1).randbytes(2 * MIB)
    value = random.Random(2).randbytes(2 * MIB)
    letter = build_dead_letter(
        DlqReason.OVERSIZE, "huge", key, value, topic="in", partition=0, offset=1, now_ms=NOW
    )
    traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    assert producer._max_request_size == KAFKA_MAX_REQUEST_SIZE
    await producer.start()
    try:
        await producer.send_and_wait(
            topic,
            letter.to_bytes(),
            key=letter.record_key(),
            headers=[("traceparent", traceparent)],
        )
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            record = await consumer.getone()
    finally:
        await consumer.stop()
    assert record.key == key[:DLQ_KEY_KEEP_BYTES]
    assert record.value is not None
    received = DeadLetter.model_validate_json(record.value)
    assert received == letter
    assert received.value_sha256 == hashlib.sha256(value).hexdigest()
    assert base64.b64decode(received.value_b64 or "") == value[:DLQ_VALUE_KEEP_BYTES]
