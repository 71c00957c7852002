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
from processor.models import (
    MAX_EPOCH_MS,
    MAX_VALUE_BYTES,
    AgentTypingTarget,
    DeadLetter,
    DlqReason,
    FromIdType,
    OpenMessagingTarget,
    TypingEvent,
)

NOW = 1_700_000_000_000
CONV = "0f8fad5b-d9cb-469f-a165-70867728950e"
COMM = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


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
        (orjson.dumps(good(occurred_at=-1)), b"sess-1", DlqReason.OCCURRED_AT_OUT_OF_RANGE),
        (
            orjson.dumps(good(occurred_at=MAX_EPOCH_MS + 1)),
            b"sess-1",
            DlqReason.OCCURRED_AT_OUT_OF_RANGE,
        ),
        (orjson.dumps(good(occurred_at=2**63)), b"sess-1", DlqReason.OCCURRED_AT_OUT_OF_RANGE),
        (orjson.dumps(good(occurred_at=2**64 - 1)), b"sess-1", DlqReason.OCCURRED_AT_OUT_OF_RANGE),
        # beyond 64 bits orjson gives a float: not an integer at all
        (
            b'{"event_id":"e","session_id":"sess-1","status":"typing","occurred_at":1'
            + b"0" * 25
            + b"}",
            b"sess-1",
            DlqReason.INVALID_TYPE,
        ),
        (orjson.dumps(good(occurred_at=1.0)), b"sess-1", DlqReason.INVALID_TYPE),
        (orjson.dumps(good(event_id="e" * 129)), b"sess-1", DlqReason.INVALID_FIELD),
        (orjson.dumps(good(participant={"id": "p" * 257})), b"sess-1", DlqReason.INVALID_FIELD),
        (orjson.dumps(good(channel="c" * 257)), b"sess-1", DlqReason.INVALID_FIELD),
    ],
)
def test_each_defect_has_its_own_reason(
    value: bytes | None, key: bytes | None, reason: DlqReason
) -> None:
    assert reason_of(value, key) is reason


def test_bounds_are_inclusive() -> None:
    raw = good(
        event_id="e" * 128,
        occurred_at=MAX_EPOCH_MS,
        participant={"id": "p" * 256},
        channel="c" * 256,
    )
    event = decode(orjson.dumps(raw))
    assert isinstance(event, TypingEvent)
    assert event.occurred_at == MAX_EPOCH_MS
    assert isinstance(decode(orjson.dumps(good(occurred_at=0))), TypingEvent)


def agent(**changes: Any) -> dict[str, Any]:
    target: dict[str, Any] = {
        "kind": "agent_typing",
        "conversation_id": CONV,
        "communication_id": COMM,
    }
    target.update(changes)
    return target


def open_messaging(**changes: Any) -> dict[str, Any]:
    target: dict[str, Any] = {"kind": "open_messaging", "integration_id": CONV, "from_id": "cust"}
    target.update(changes)
    return target


def test_no_target_is_the_webchat_session() -> None:
    event = decode(orjson.dumps(good()))
    assert isinstance(event, TypingEvent)
    assert event.target is None
    assert isinstance(decode(orjson.dumps(good(target=None))), TypingEvent)


def test_agent_typing_target() -> None:
    event = decode(orjson.dumps(good(target=agent(extra="ignored"))))
    assert isinstance(event, TypingEvent)
    assert event.target == AgentTypingTarget(
        kind="agent_typing", conversation_id=CONV, communication_id=COMM
    )


def test_open_messaging_target_defaults() -> None:
    event = decode(orjson.dumps(good(target=open_messaging())))
    assert isinstance(event, TypingEvent)
    target = event.target
    assert isinstance(target, OpenMessagingTarget)
    assert (target.from_id_type, target.nickname) == (FromIdType.OPAQUE, None)
    full = open_messaging(from_id="a/b@x.org", from_id_type="Email", nickname="Ann")
    event = decode(orjson.dumps(good(target=full)))
    assert isinstance(event, TypingEvent)
    assert isinstance(event.target, OpenMessagingTarget)
    assert event.target.from_id_type is FromIdType.EMAIL
    assert event.target.nickname == "Ann"


def test_upper_case_uuids_are_normalised_to_lower_case() -> None:
    event = decode(orjson.dumps(good(target=agent(conversation_id=CONV.upper()))))
    assert isinstance(event, TypingEvent)
    assert isinstance(event.target, AgentTypingTarget)
    assert event.target.conversation_id == CONV


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (agent(conversation_id="../../users/me"), DlqReason.INVALID_TARGET_ID),
        (agent(communication_id=CONV.replace("-", "")), DlqReason.INVALID_TARGET_ID),
        (agent(communication_id="{" + COMM + "}"), DlqReason.INVALID_TARGET_ID),
        (agent(communication_id=COMM + "\n"), DlqReason.INVALID_TARGET_ID),
        (agent(conversation_id=CONV.replace("0", "g", 1)), DlqReason.INVALID_TARGET_ID),
        (agent(conversation_id=7), DlqReason.INVALID_TARGET_ID),
        (open_messaging(integration_id=""), DlqReason.INVALID_TARGET_ID),
        (open_messaging(integration_id=None), DlqReason.INVALID_TARGET_ID),
        ({"kind": "agent_typing", "conversation_id": CONV}, DlqReason.INVALID_TARGET),
        ({"kind": "webchat"}, DlqReason.INVALID_TARGET),
        ({"conversation_id": CONV, "communication_id": COMM}, DlqReason.INVALID_TARGET),
        ({"kind": ["agent_typing"]}, DlqReason.INVALID_TARGET),
        (open_messaging(from_id_type="Sms"), DlqReason.INVALID_TARGET),
        (open_messaging(from_id_type="opaque"), DlqReason.INVALID_TARGET),
        (open_messaging(from_id_type=None), DlqReason.INVALID_TARGET),
        (open_messaging(from_id=""), DlqReason.INVALID_TARGET),
        (open_messaging(from_id="x" * 257), DlqReason.INVALID_TARGET),
        (open_messaging(nickname="n" * 257), DlqReason.INVALID_TARGET),
        ({"kind": "open_messaging", "integration_id": CONV}, DlqReason.INVALID_TARGET),
        ("agent_typing", DlqReason.INVALID_TARGET),
        ([agent()], DlqReason.INVALID_TARGET),
    ],
)
def test_target_defects_have_their_own_reasons(target: Any, reason: DlqReason) -> None:
    assert reason_of(orjson.dumps(good(target=target))) is reason


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


# What the validator's own JSON parser accepts and orjson does not, in a member no field
# uses: orjson's verdict (invalid JSON) stands.
OUT_OF_JSON = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1E309", b"9" * 400]
UNKNOWN_MEMBERS = [
    b',"extra":%s}',
    b',"participant":{"id":"p","extra":%s}}',
    b',"target":{"kind":"agent_typing","conversation_id":"' + CONV.encode() + b'",'
    b'"communication_id":"' + COMM.encode() + b'","extra":%s}}',
    b',"extra":{"deeper":[1,%s]}}',
]


@pytest.mark.parametrize("number", OUT_OF_JSON)
@pytest.mark.parametrize("member", UNKNOWN_MEMBERS)
def test_numbers_orjson_refuses_are_invalid_json_even_where_ignored(
    number: bytes, member: bytes
) -> None:
    value = orjson.dumps(good())[:-1] + member % number
    letter = decode(value)
    assert isinstance(letter, DeadLetter), letter
    assert letter.reason is DlqReason.INVALID_JSON
    with pytest.raises(orjson.JSONDecodeError) as refused:
        orjson.loads(value)
    assert letter.detail == str(refused.value)


def test_nesting_orjson_reads_is_accepted_where_ignored() -> None:
    # deeper than the validator's own parser goes, within orjson's limit
    value = orjson.dumps(good())[:-1] + b',"extra":' + b"[" * 600 + b"]" * 600 + b"}"
    assert decode(value) == TypingEvent.model_validate(good())


@pytest.mark.parametrize(
    "document",
    [
        good(event_id="urn:evt:1", channel="a:b"),
        good(participant={"id": "p:1"}, target={**agent(), "note": "x:y"}),
        good(unknown=[1, {"a": 2.5}], participant={"id": "p", "extra": None}),
        good(status="paused") | {"session_id": "sess-1"},
    ],
)
def test_colons_in_text_and_unknown_members_decode_as_the_model_reads_them(
    document: dict[str, Any],
) -> None:
    event = decode(orjson.dumps(document))
    assert isinstance(event, TypingEvent)
    assert event == TypingEvent.model_validate(document)
    assert event.model_fields_set == TypingEvent.model_validate(document).model_fields_set


def test_duplicate_members_keep_the_last_as_orjson_does() -> None:
    value = orjson.dumps(good())[:-1] + b',"status":"paused","participant":{"id":"a","id":"b"}}'
    event = decode(value)
    assert isinstance(event, TypingEvent)
    assert event.status is Status.PAUSED
    assert event.participant is not None
    assert event.participant.id == "b"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"event_id":"\\ud800","session_id":"sess-1"}', DlqReason.INVALID_JSON),
        (b'{"event_id":"\xff","session_id":"sess-1"}', DlqReason.INVALID_JSON),
        (b"\xef\xbb\xbf" + orjson.dumps(good()), DlqReason.INVALID_JSON),
        (orjson.dumps(good()) + b"x", DlqReason.INVALID_JSON),
        (b"[]", DlqReason.NOT_AN_OBJECT),
        (
            b'{"event_id":"e","session_id":"sess-1","status":"typing","occurred_at":1%s}'
            % (b"0" * 30),
            DlqReason.INVALID_TYPE,
        ),
    ],
)
def test_rejections_keep_orjsons_reason_and_detail(value: bytes, reason: DlqReason) -> None:
    letter = decode(value)
    assert isinstance(letter, DeadLetter), letter
    assert letter.reason is reason
    if reason is DlqReason.INVALID_JSON:
        with pytest.raises(orjson.JSONDecodeError) as refused:
            orjson.loads(value)
        assert letter.detail == str(refused.value)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b"null", "null"),
        (b"true", "boolean"),
        (b"12", "number"),
        (b"1.5", "number"),
        (b'"sess-1"', "string"),
        (b"[]", "array"),
    ],
)
def test_a_value_that_is_no_object_is_named_by_its_json_type(value: bytes, kind: str) -> None:
    letter = decode(value)
    assert isinstance(letter, DeadLetter), letter
    assert letter.reason is DlqReason.NOT_AN_OBJECT
    assert letter.detail == f"value is a JSON {kind}, not an object"
