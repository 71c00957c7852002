"""Raw input bytes become an event or a dead letter with the right reason, never an error."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.codec import decode_event
from processor.domain import Role, Status
from processor.models import MAX_VALUE_BYTES, DeadLetter, DlqReason, TypingEvent

NOW = 1_700_000_000_000


def good(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "evt-1",
        "session_id": "sess-1",
        "status": "typing",
        "occurred_at": NOW,
    }
    event.update(changes)
    return event


def decode(value: bytes | None, key: bytes | None = b"sess-1") -> TypingEvent | DeadLetter:
    return decode_event(key, value, topic="in", partition=3, offset=42, now_ms=NOW)


def reason_of(value: bytes | None, key: bytes | None = b"sess-1") -> DlqReason:
    result = decode(value, key)
    assert isinstance(result, DeadLetter), result
    return result.reason


def test_valid_event_with_optional_fields_and_unknown_fields_ignored() -> None:
    raw = good(timeout_ms=800, participant={"id": "p", "role": "bot"}, channel="web", extra=1)
    event = decode(orjson.dumps(raw))
    assert isinstance(event, TypingEvent)
    assert event.status is Status.TYPING
    assert event.timeout_ms == 800
    assert event.role is Role.BOT
    assert event.channel == "web"


def test_role_defaults_to_customer() -> None:
    event = decode(orjson.dumps(good()))
    assert isinstance(event, TypingEvent)
    assert event.role is Role.CUSTOMER


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (b"{not json", b"sess-1", DlqReason.INVALID_JSON),
        (b"\xff\xfe", b"sess-1", DlqReason.INVALID_JSON),
        (b"[1, 2]", b"sess-1", DlqReason.NOT_AN_OBJECT),
        (None, b"sess-1", DlqReason.MISSING_VALUE),
        (orjson.dumps(good(occurred_at="1700000000000")), b"sess-1", DlqReason.INVALID_TYPE),
        (orjson.dumps(good(occurred_at=True)), b"sess-1", DlqReason.INVALID_TYPE),
        (orjson.dumps(good(session_id=7)), b"sess-1", DlqReason.INVALID_TYPE),
        (orjson.dumps(good(session_id="../x")), b"../x", DlqReason.INVALID_SESSION_ID),
        (orjson.dumps(good(session_id="a/b")), b"a/b", DlqReason.INVALID_SESSION_ID),
        (orjson.dumps(good(session_id="")), b"", DlqReason.INVALID_SESSION_ID),
        (orjson.dumps(good(session_id="a" * 129)), b"a" * 129, DlqReason.INVALID_SESSION_ID),
        (orjson.dumps(good(status="dancing")), b"sess-1", DlqReason.INVALID_STATUS),
        (orjson.dumps(good(timeout_ms=499)), b"sess-1", DlqReason.TIMEOUT_OUT_OF_RANGE),
        (orjson.dumps(good(timeout_ms=60_001)), b"sess-1", DlqReason.TIMEOUT_OUT_OF_RANGE),
        (orjson.dumps({"session_id": "sess-1"}), b"sess-1", DlqReason.MISSING_FIELD),
        (
            orjson.dumps(good(participant={"id": "p", "role": "x"})),
            b"sess-1",
            DlqReason.INVALID_FIELD,
        ),
        (orjson.dumps(good()), b"other", DlqReason.KEY_MISMATCH),
        (orjson.dumps(good()), None, DlqReason.KEY_MISMATCH),
        (orjson.dumps(good(channel="x" * MAX_VALUE_BYTES)), b"sess-1", DlqReason.OVERSIZE),
    ],
)
def test_each_defect_has_its_own_reason(
    value: bytes | None, key: bytes | None, reason: DlqReason
) -> None:
    assert reason_of(value, key) is reason


def test_session_id_of_128_chars_is_accepted() -> None:
    sid = "a" * 128
    assert isinstance(decode(orjson.dumps(good(session_id=sid)), sid.encode()), TypingEvent)


def test_dead_letter_keeps_original_bytes_and_source() -> None:
    value = b"\x00garbage\xff"
    letter = decode(value, b"k\x00")
    assert isinstance(letter, DeadLetter)
    assert base64.b64decode(letter.value_b64 or "") == value
    assert base64.b64decode(letter.key_b64 or "") == b"k\x00"
    assert (letter.topic, letter.partition, letter.offset) == ("in", 3, 42)
    assert letter.timestamp.startswith("2023-11-14T22:13:20")
    assert orjson.loads(letter.to_bytes())["reason"] == "invalid_json"


@settings(deadline=None)
@given(key=st.none() | st.binary(max_size=200), value=st.none() | st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(key: bytes | None, value: bytes | None) -> None:
    result = decode_event(key, value, topic="t", partition=0, offset=0, now_ms=NOW)
    assert isinstance(result, TypingEvent | DeadLetter)
    if isinstance(result, DeadLetter) and value is not None:
        assert base64.b64decode(result.value_b64 or "") == value


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=6,
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    document=st.fixed_dictionaries(
        {},
        optional={
            "event_id": json_values,
            "session_id": json_values
            | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,10}", fullmatch=True),
            "status": json_values | st.sampled_from(["typing", "paused", "stopped"]),
            "occurred_at": json_values,
            "timeout_ms": json_values | st.integers(0, 70_000),
            "participant": json_values,
            "channel": json_values,
        },
    ),
    key=st.none() | st.binary(max_size=20),
)
def test_arbitrary_json_objects_never_raise(document: dict[str, Any], key: bytes | None) -> None:
    result = decode_event(key, orjson.dumps(document), topic="t", partition=0, offset=0, now_ms=NOW)
    if isinstance(result, TypingEvent):
        assert key == result.session_id.encode()
    else:
        assert result.reason in DlqReason
