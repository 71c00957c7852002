"""Raw Kafka bytes to a valid `TypingEvent` or a `DeadLetter` — never an exception.

Validation is the model's own compiled (pydantic-core) validator, so the rules and the dead
letter reasons are the model's by construction. It is also the fastest option measured:
building the same objects with `model_construct` alone, without any check, takes about
twice as long (`bench/bench_codec.py`), so a hand-written Python check would only add
a second copy of the rules to keep in step.

orjson stays the parser: the validator's own JSON input (`validate_json`) saved 0.1-0.2 us
per event at most (pydantic-core 2.46), and its parser accepts `NaN`, `Infinity` and
numbers past a double's range, which orjson refuses as invalid JSON; telling those apart
cost more than the saving (`tests/test_codec.py` holds orjson's verdicts).
"""

from __future__ import annotations

import orjson
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from processor.deadletter import build_dead_letter, iso_utc
from processor.models import (
    MAX_VALUE_BYTES,
    TARGET_ID_FIELDS,
    DeadLetter,
    DlqReason,
    TypingEvent,
)

__all__ = ["check_event", "decode_event", "iso_utc", "json_kind", "reason_for"]

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

# JSON's names of what orjson reads that is no object (Python's would say NoneType for null)
_JSON_KINDS = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}

# `model_validate` minus its keyword-argument wrapper (about 0.2 us per event)
_validate = TypingEvent.__pydantic_validator__.validate_python


def json_kind(document: object) -> str:
    """What JSON calls the type of a parsed `document` (array, string, null...)."""
    return _JSON_KINDS.get(type(document), "object")


def reason_for(error: ErrorDetails) -> DlqReason:
    """The dead-letter reason of one validation error of a payload (a `TypingEvent`; a
    `CrmSyncRecord` too, whose fields are a subset's namesakes)."""
    loc = error["loc"]
    field = loc[0] if loc else ""
    kind = error["type"]
    if field == "target":
        # loc is ("target", <kind>, <field>) inside a target of a known kind
        if len(loc) == 3 and loc[2] in TARGET_ID_FIELDS and kind != "missing":
            return DlqReason.INVALID_TARGET_ID
        return DlqReason.INVALID_TARGET
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
    if field == "occurred_at":
        return DlqReason.OCCURRED_AT_OUT_OF_RANGE
    return DlqReason.INVALID_FIELD


def describe_errors(errors: list[ErrorDetails]) -> str:
    """A dead letter's `detail` for validation errors: where each is, and what it says."""
    return "; ".join(_describe(error) for error in errors)


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

    Returns the event, or a dead letter carrying the reason and the original bytes (a
    prefix of them when huge). It never raises for any input bytes.
    """
    checked = check_event(key, value)
    if isinstance(checked, TypingEvent):
        return checked
    reason, detail = checked
    return build_dead_letter(
        reason, detail, key, value, topic=topic, partition=partition, offset=offset, now_ms=now_ms
    )


def check_event(key: bytes | None, value: bytes | None) -> TypingEvent | tuple[DlqReason, str]:
    """`decode_event` without the dead letter: the event, or why it is none and the
    letter's detail. Never raises; the hot path, which builds its letters from the whole
    record (timestamp and headers too), reads the clock only for them."""
    if value is None:
        return DlqReason.MISSING_VALUE, "record has no value (tombstone)"
    if len(value) > MAX_VALUE_BYTES:
        return DlqReason.OVERSIZE, f"value is {len(value)} bytes; limit {MAX_VALUE_BYTES}"
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return DlqReason.INVALID_JSON, str(exc)
    if type(document) is not dict:
        return DlqReason.NOT_AN_OBJECT, f"value is a JSON {json_kind(document)}, not an object"
    try:
        event: TypingEvent = _validate(document)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        return reason_for(errors[0]), describe_errors(errors)
    if key is None or key != event.session_id.encode():
        shown = "none" if key is None else repr(key[:140])
        return DlqReason.KEY_MISMATCH, f"key {shown} differs from session_id"
    return event
