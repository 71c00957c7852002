"""Dead letters that always fit on the DLQ topic, whatever the size of the input record.

A dead letter keeps the original key and value bytes (base64) up to `DLQ_KEY_KEEP_BYTES`
and `DLQ_VALUE_KEEP_BYTES`; beyond that it keeps a prefix and says `truncated: true`. Sizes
and SHA-256 digests always describe the original bytes, and the source position lets an
operator fetch them while the input topic retains the record. The record's timestamp and
headers (a `traceparent`, say) come along for a replay; headers beyond
`DLQ_HEADERS_KEEP_BYTES` are left out and `headers_truncated` says so. Its encoded value
plus its Kafka key (`DeadLetter.record_key()`) never exceed `MAX_DLQ_RECORD_BYTES`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from processor.models import (
    DLQ_HEADERS_KEEP_BYTES,
    DLQ_KEY_KEEP_BYTES,
    DLQ_VALUE_KEEP_BYTES,
    MAX_DETAIL_CHARS,
    MAX_DLQ_RECORD_BYTES,
    MAX_TOPIC_CHARS,
    DeadLetter,
    DeadLetterHeader,
    DlqReason,
    TimestampType,
    b64_chars,
)

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord

DLQ_MESSAGE_BYTES_NEEDED = MAX_DLQ_RECORD_BYTES + 32 * 1024
"""The least `max.message.bytes` of a DLQ topic that takes every dead letter: the largest
one (`MAX_DLQ_RECORD_BYTES`) in a record batch of its own, with its record's headers (a
trace context, whose `tracestate` holds at most 32 keys and values of 256 characters) and
the batch's framing; the producer batches smaller letters together only up to less than
that. Below it, the topic refuses the largest letters, each stopping its partition for
good (a dead letter is never skipped)."""

# Kafka's timestamp types by number (a record batch's timestamp type attribute)
_TIMESTAMP_TYPES = (TimestampType.CREATE_TIME, TimestampType.LOG_APPEND_TIME)


def iso_utc(epoch_ms: int) -> str:
    """ISO-8601 UTC text for an epoch-millisecond time."""
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def _kept(data: bytes | None, limit: int) -> tuple[str | None, int | None, str | None, bool]:
    """base64 of what is kept, original size, original SHA-256, whether it was cut."""
    if data is None:
        return None, None, None, False
    kept = data[:limit]
    digest = hashlib.sha256(data).hexdigest()
    return base64.b64encode(kept).decode("ascii"), len(data), digest, len(kept) < len(data)


def _clean_text(text: str, limit: int) -> str:
    # A lone surrogate (e.g. from an exception message) cannot be encoded as UTF-8 JSON;
    # replacing it keeps the letter encodable and the length unchanged.
    return text[:limit].encode("utf-8", "replace").decode("utf-8")


def _kept_headers(
    headers: Sequence[tuple[str, bytes | None]],
) -> tuple[tuple[DeadLetterHeader, ...], bool]:
    """The headers kept, in order, while their JSON fits `DLQ_HEADERS_KEEP_BYTES`; whether
    any was left out."""
    kept: list[DeadLetterHeader] = []
    used = 2  # the list's brackets
    for key, value in headers:
        # encoded, a header takes at least its key's characters and its value's base64: a
        # huge one is never encoded
        if used + len(key) + b64_chars(len(value or b"")) > DLQ_HEADERS_KEEP_BYTES:
            return tuple(kept), True
        header = DeadLetterHeader(
            key=_clean_text(key, DLQ_HEADERS_KEEP_BYTES),
            value_b64=None if value is None else base64.b64encode(value).decode("ascii"),
        )
        used += len(header.to_bytes()) + 1  # and a comma
        if used > DLQ_HEADERS_KEEP_BYTES:
            return tuple(kept), True
        kept.append(header)
    return tuple(kept), False


def build_dead_letter(
    reason: DlqReason,
    detail: str,
    key: bytes | None,
    value: bytes | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    now_ms: int,
    record_timestamp: int | None = None,
    record_timestamp_type: TimestampType | None = None,
    headers: Sequence[tuple[str, bytes | None]] = (),
) -> DeadLetter:
    """The dead letter of one input record at `topic`/`partition`/`offset`, with its
    timestamp and headers when known.

    `detail` is cut to `MAX_DETAIL_CHARS`; key and value are kept whole when small, else as
    a prefix (`truncated` true); headers while they fit (else `headers_truncated` true).
    The result always encodes within `MAX_DLQ_RECORD_BYTES` together with its Kafka key
    `record_key()`.
    """
    key_b64, key_size, key_sha256, key_cut = _kept(key, DLQ_KEY_KEEP_BYTES)
    value_b64, value_size, value_sha256, value_cut = _kept(value, DLQ_VALUE_KEEP_BYTES)
    kept_headers, headers_cut = _kept_headers(headers)
    return DeadLetter(
        reason=reason,
        detail=_clean_text(detail, MAX_DETAIL_CHARS),
        topic=_clean_text(topic, MAX_TOPIC_CHARS),
        partition=partition,
        offset=offset,
        key_b64=key_b64,
        value_b64=value_b64,
        timestamp=iso_utc(now_ms),
        key_size=key_size,
        key_sha256=key_sha256,
        value_size=value_size,
        value_sha256=value_sha256,
        truncated=key_cut or value_cut,
        record_timestamp=record_timestamp,
        record_timestamp_type=record_timestamp_type,
        headers=kept_headers,
        header_count=len(headers),
        headers_truncated=headers_cut,
    )


def dead_letter_of(
    record: ConsumerRecord[bytes, bytes], reason: DlqReason, detail: str, now_ms: int
) -> DeadLetter:
    """The dead letter of a consumed record, its timestamp and headers included (see
    `build_dead_letter`)."""
    # no timestamp: -1 (a record read by its position only, or a producer's "none"), or
    # None with no type either (a message of format v0, as the client hands it out)
    stamped = record.timestamp is not None and record.timestamp != -1
    return build_dead_letter(
        reason,
        detail,
        record.key,
        record.value,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        now_ms=now_ms,
        record_timestamp=record.timestamp if stamped else None,
        record_timestamp_type=_TIMESTAMP_TYPES[record.timestamp_type] if stamped else None,
        headers=record.headers,
    )
