"""`decode_event` accepts, rejects and builds exactly as `TypingEvent.model_validate` does.

Valid events are generated from the contract, then mutated (wrong types, values out of
range, missing and extra fields, unicode, huge numbers, booleans, floats such as 1.0,
nested garbage); every outcome is compared with the model's: accept/reject, the values
and fields set of an accepted event, and the dead-letter reason of a rejected one.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from processor.codec import decode_event, reason_for
from processor.models import (
    MAX_EPOCH_MS,
    MAX_EVENT_ID_CHARS,
    MAX_TEXT_CHARS,
    MAX_TIMEOUT_MS,
    MIN_TIMEOUT_MS,
    DeadLetter,
    DlqReason,
    TypingEvent,
)

NOW = 1_700_000_000_000

# UTF-8 cannot carry lone surrogates: the wire never holds them
text = st.text(alphabet=st.characters(exclude_categories=["Cs"]))


def bounded_text(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(
        alphabet=st.characters(exclude_categories=["Cs"]), min_size=min_size, max_size=max_size
    )


hexdigit = "0123456789abcdefABCDEF"
uuids = st.builds(
    lambda parts: "-".join(parts),
    st.tuples(*(st.text(alphabet=hexdigit, min_size=n, max_size=n) for n in (8, 4, 4, 4, 12))),
)

agent_targets = st.fixed_dictionaries(
    {"kind": st.just("agent_typing"), "conversation_id": uuids, "communication_id": uuids}
)
open_targets = st.fixed_dictionaries(
    {
        "kind": st.just("open_messaging"),
        "integration_id": uuids,
        "from_id": bounded_text(1, MAX_TEXT_CHARS),
    },
    optional={
        "from_id_type": st.sampled_from(["Opaque", "Email", "Phone"]),
        "nickname": st.none() | bounded_text(0, MAX_TEXT_CHARS),
    },
)
participants = st.fixed_dictionaries(
    {"id": bounded_text(1, MAX_TEXT_CHARS)},
    optional={"role": st.sampled_from(["customer", "agent", "bot"])},
)

valid_events = st.fixed_dictionaries(
    {
        "event_id": bounded_text(1, MAX_EVENT_ID_CHARS),
        "session_id": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", fullmatch=True),
        "status": st.sampled_from(["typing", "paused", "stopped"]),
        "occurred_at": st.integers(0, MAX_EPOCH_MS),
    },
    optional={
        "timeout_ms": st.none() | st.integers(MIN_TIMEOUT_MS, MAX_TIMEOUT_MS),
        "participant": st.none() | participants,
        "channel": st.none() | bounded_text(0, MAX_TEXT_CHARS),
        "target": st.none() | agent_targets | open_targets | agent_targets | open_targets,
        "unknown_field": st.integers() | text,
    },
)

garbage = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(
        [
            0,
            1,
            -1,
            499,
            500,
            60_000,
            60_001,
            MAX_EPOCH_MS,
            MAX_EPOCH_MS + 1,
            2**63 - 1,
            2**63,
            2**64 - 1,
        ]
    )
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.0, 1.0, 500.0, 1.7e12])
    | text
    | st.sampled_from(
        [
            "",
            "typing",
            "TYPING",
            "agent_typing",
            "open_messaging",
            "Email",
            "customer",
            "sess-1",
            "a\n",
            "é",
            "\U0001f600",
            "x" * 300,
            "0F8FAD5B-D9CB-469F-A165-70867728950E",
            "{0f8fad5b-d9cb-469f-a165}",
        ]
    ),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(text | st.sampled_from(["id", "role", "kind"]), children, max_size=3)
    ),
    max_leaves=5,
)


UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
NEAR_MISSES: dict[str, list[Any]] = {
    "event_id": ["", "e" * (MAX_EVENT_ID_CHARS + 1), "e" * MAX_EVENT_ID_CHARS],
    "session_id": ["", "a" * 128, "a" * 129, "../x", "a b", "é", "-a", "a\n"],
    "status": ["Typing", "stopped ", "cleared"],
    "occurred_at": [-1, 0, MAX_EPOCH_MS, MAX_EPOCH_MS + 1, 2**63, 2**64 - 1, 10**30, 1.0, True],
    "timeout_ms": [MIN_TIMEOUT_MS - 1, MAX_TIMEOUT_MS + 1, -5, 500.0, False],
    "role": ["Agent", "supervisor", None],
    "kind": ["webchat", "Agent_Typing", None, 1],
    "from_id_type": ["opaque", "SMS", None],
    "conversation_id": [
        UUID.upper(),
        UUID.replace("-", ""),
        "{" + UUID + "}",
        UUID[:-1],
        UUID + "0",
        " " + UUID,
        UUID.replace("a", "g"),
        "../" + UUID,
    ],
}
NEAR_MISSES["communication_id"] = NEAR_MISSES["integration_id"] = NEAR_MISSES["conversation_id"]
for name in ("id", "from_id", "nickname", "channel"):
    NEAR_MISSES[name] = ["", "x" * MAX_TEXT_CHARS, "x" * (MAX_TEXT_CHARS + 1), None]


def paths(document: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of nested objects in `document`."""
    found = []
    for name, value in document.items():
        found.append((*prefix, name))
        if isinstance(value, dict):
            found.extend(paths(value, (*prefix, name)))
    return found


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    document = copy.deepcopy(draw(valid_events))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(document) or [("event_id",)]))
        parent = document
        for name in where[:-1]:
            parent = parent[name]
        action = draw(
            st.sampled_from(["near", "near", "replace", "delete", "add", "newline", "case"])
        )
        leaf = where[-1]
        if action == "near" and leaf in NEAR_MISSES:
            parent[leaf] = draw(st.sampled_from(NEAR_MISSES[leaf]))
        elif action in ("near", "replace"):
            parent[leaf] = draw(garbage)
        elif action == "delete":
            parent.pop(leaf, None)
        elif action == "add":
            parent[draw(text | st.sampled_from(["target", "participant", "timeout_ms"]))] = draw(
                garbage
            )
        elif isinstance(parent.get(leaf), str):
            value = parent[leaf]
            parent[leaf] = value + "\n" if action == "newline" else value.swapcase()
    return document


def by_the_model(key: bytes | None, value: bytes) -> TypingEvent | DlqReason:
    """The reference: orjson, `model_validate`, then the key check."""
    document = orjson.loads(value)
    try:
        event = TypingEvent.model_validate(document)
    except ValidationError as exc:
        return reason_for(exc.errors()[0])
    if key != event.session_id.encode():
        return DlqReason.KEY_MISMATCH
    return event


def assert_agree(document: dict[str, Any], key: bytes | None) -> TypingEvent | None:
    # the standard library writes integers of any size (orjson reads those over 64 bits
    # as floats) and floats such as 1.0 as written
    value = json.dumps(document, ensure_ascii=False).encode()
    got = decode_event(key, value, topic="t", partition=0, offset=0, now_ms=NOW)
    expected = by_the_model(key, value)
    if isinstance(expected, TypingEvent):
        assert isinstance(got, TypingEvent), got
        assert got == expected
        assert got.model_dump() == expected.model_dump()
        assert got.model_fields_set == expected.model_fields_set
        event("accepted")
        for name in ("participant", "target"):
            inner, reference = getattr(got, name), getattr(expected, name)
            assert type(inner) is type(reference)
            if reference is not None:
                assert inner.model_fields_set == reference.model_fields_set
        return got
    assert isinstance(got, DeadLetter), got
    assert got.reason is expected
    event(got.reason.value)
    return None


def key_for(document: dict[str, Any], other: bytes | None) -> bytes | None:
    session_id = document.get("session_id")
    return session_id.encode() if isinstance(session_id, str) else other


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=valid_events)
def test_generated_valid_events_are_accepted_as_the_model_accepts_them(
    document: dict[str, Any],
) -> None:
    event = assert_agree(document, document["session_id"].encode())
    assert event is not None


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    document=mutated_events(), other_key=st.none() | st.binary(max_size=8), right_key=st.booleans()
)
def test_mutated_events_get_the_models_verdict_and_reason(
    document: dict[str, Any], other_key: bytes | None, right_key: bool
) -> None:
    assert_agree(document, key_for(document, other_key) if right_key else other_key)
