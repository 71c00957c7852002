"""Raw Kafka bytes to a valid `TypingEvent` or a `DeadLetter` — never an exception."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from processor.models import MAX_VALUE_BYTES, DeadLetter, DlqReason, TypingEvent

_TYPE_ERRORS = frozenset(
    {
        "string_type",
        "int_type",
        "float_type",
        "bool_type",
        "model_type",
        "model_attributes_type",
        "dict_type",
        "int_from_float",
        "none_required",
    }
)


def iso_utc(epoch_ms: int) -> str:
    """ISO-8601 UTC text for an epoch-millisecond time."""
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def _reason_for(error: ErrorDetails) -> DlqReason:
    field = error["loc"][0] if error["loc"] else ""
    kind = error["type"]
    if kind == "missing":
        return DlqReason.MISSING_FIELD
    if kind in _TYPE_ERRORS:
        return DlqReason.INVALID_TYPE
    if field == "session_id":
        return DlqReason.INVALID_SESSION_ID
    if field == "status":
        return DlqReason.INVALID_STATUS
    if field == "timeout_ms":
        return DlqReason.TIMEOUT_OUT_OF_RANGE
    return DlqReason.INVALID_FIELD


def _describe(error: ErrorDetails) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "value"
    return f"{where}: {error['msg']}"


def decode_event(
    key: bytes | None,
    value: bytes | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    now_ms: int,
) -> TypingEvent | DeadLetter:
    """Validate one input record.

    Returns the event, or a dead letter carrying the reason and the original bytes.
    It never raises for any input bytes.
    """

    def dead(reason: DlqReason, detail: str) -> DeadLetter:
        return DeadLetter(
            reason=reason,
            detail=detail[:1000],
            topic=topic,
            partition=partition,
            offset=offset,
            key_b64=None if key is None else base64.b64encode(key).decode("ascii"),
            value_b64=None if value is None else base64.b64encode(value).decode("ascii"),
            timestamp=iso_utc(now_ms),
        )

    if value is None:
        return dead(DlqReason.MISSING_VALUE, "record has no value (tombstone)")
    if len(value) > MAX_VALUE_BYTES:
        return dead(DlqReason.OVERSIZE, f"value is {len(value)} bytes; limit {MAX_VALUE_BYTES}")
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return dead(DlqReason.INVALID_JSON, str(exc))
    if not isinstance(document, dict):
        return dead(DlqReason.NOT_AN_OBJECT, f"value is a JSON {type(document).__name__}")
    try:
        event = TypingEvent.model_validate(document)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        return dead(_reason_for(errors[0]), "; ".join(_describe(e) for e in errors))
    if key is None or key != event.session_id.encode():
        shown = "none" if key is None else repr(key[:140])
        return dead(DlqReason.KEY_MISMATCH, f"key {shown} differs from session_id")
    return event
