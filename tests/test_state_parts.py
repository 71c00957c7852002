"""Unit tests of the state engine's building blocks: dedupe, timers, changelog, config."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.domain import (
    SESSION_ID_PATTERN,
    AgentTypingTarget,
    ChangeReason,
    Indicator,
    OpenMessagingTarget,
    Status,
)
from processor.models import CrmStatus
from processor.settings import TimeoutMatrix, TypingSettings
from processor.state.changelog import ChangelogError, decode, encode, floor_record, tombstone
from processor.state.config import EngineConfig
from processor.state.dedupe import EventIdMemory
from processor.state.recovery import latest_sessions
from processor.state.session import Session
from processor.state.timers import COMPACT_MIN_ENTRIES, TimerWheel
from processor.state.work import Work, WorkKind, crm_event_id


def test_dedupe_drops_repeats_and_forgets_only_beyond_capacity() -> None:
    memory = EventIdMemory(3)
    assert [memory.add(x) for x in ("a", "b", "a", "c")] == [True, True, False, True]
    assert [memory.add(x) for x in ("d", "e")] == [True, True]
    assert "a" in memory  # only five distinct ids so far: within twice the capacity
    assert memory.add("f")
    assert len(memory) == 3
    assert "a" not in memory
    assert all(x in memory for x in ("d", "e", "f"))
    assert memory.add("a")  # forgotten, so accepted again


@settings(max_examples=200)
@given(ids=st.lists(st.integers(0, 40).map(str), max_size=300), capacity=st.integers(1, 12))
def test_dedupe_remembers_the_last_capacity_ids_within_bounded_memory(
    ids: list[str], capacity: int
) -> None:
    memory = EventIdMemory(capacity)
    recent: list[str] = []  # distinct ids, most recently added last
    for x in ids:
        added = memory.add(x)
        if x in recent[-capacity:]:
            assert not added, f"{x} is among the last {capacity} ids"
        if added:
            if x in recent:
                recent.remove(x)
            recent.append(x)
        assert len(memory) < 2 * capacity
        assert all(y in memory for y in recent[-capacity:])


def test_dedupe_rejects_zero_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        EventIdMemory(0)


def test_timers_fire_never_early_and_at_most_one_resolution_late() -> None:
    wheel = TimerWheel(10)
    bucket = wheel.schedule("s1", 1_005)
    wheel.schedule("s2", 1_010)
    wheel.schedule("s3", 1_011)
    assert bucket == 1_010
    assert wheel.next_due() == 1_010
    assert list(wheel.pop_due(1_009)) == []
    assert list(wheel.pop_due(1_010)) == [(1_010, ["s1", "s2"])]
    assert wheel.next_due() == 1_020
    assert len(wheel) == 1
    assert list(wheel.pop_due(5_000)) == [(1_020, ["s3"])]
    assert wheel.next_due() is None


def test_timers_pop_in_time_order_whatever_the_insertion_order() -> None:
    wheel = TimerWheel(1)
    for at in (50, 10, 30, 20, 40):
        wheel.schedule(str(at), at)
    assert [b for b, _ in wheel.pop_due(45)] == [10, 20, 30, 40]


@settings(max_examples=60, deadline=None)
@given(
    moves=st.lists(
        st.tuples(st.integers(0, 40), st.integers(1, 400), st.integers(0, 30)),
        min_size=1,
        max_size=400,
    )
)
def test_cancelled_timers_are_dropped_and_live_ones_fire_once_in_time(
    moves: list[tuple[int, int, int]],
) -> None:
    """An owner that reschedules its keys (earlier or later) and cancels what it leaves
    behind: every live timer fires exactly once, at its bucket, and the cancelled entries
    never outnumber the live ones by more than the compaction threshold, even when a
    compaction comes while due buckets are being popped."""
    live: dict[str, int] = {}  # key -> bucket of its live entry (the owner's `wake`)
    wheel = TimerWheel(5, lambda key, bucket: live.get(key) == bucket)
    now = 0
    fired: list[tuple[str, int]] = []
    expected: list[tuple[str, int]] = []
    for n, (key_no, delay, advance) in enumerate(moves * 8):
        key = f"k{key_no}"
        previous = live.get(key)
        live[key] = wheel.schedule(key, now + delay)
        expected.append((key, live[key]))
        if previous is not None:
            expected.remove((key, previous))
            wheel.cancel()  # once the owner no longer names the entry
        assert len(wheel) <= 2 * len(live) + COMPACT_MIN_ENTRIES
        now += advance
        for bucket, keys in wheel.pop_due(now):
            assert bucket <= now
            for fired_key in keys:
                if live.get(fired_key) != bucket:
                    continue  # cancelled
                fired.append((fired_key, bucket))
                del live[fired_key]
                if n % 3 == 0:  # rescheduled from within the pop (a compaction may run)
                    live[fired_key] = wheel.schedule(fired_key, now + delay)
                    expected.append((fired_key, live[fired_key]))
        assert len(wheel) <= 2 * len(live) + COMPACT_MIN_ENTRIES
    for bucket, keys in wheel.pop_due(now + 1000):
        fired += [(key, bucket) for key in keys if live.get(key) == bucket and live.pop(key)]
    assert sorted(fired) == sorted(expected)
    assert not live
    assert len(wheel) == 0


def test_a_timer_compaction_drops_what_the_owner_no_longer_wants() -> None:
    live: dict[str, int] = {}
    wheel = TimerWheel(1, lambda key, bucket: live.get(key) == bucket)
    for n in range(COMPACT_MIN_ENTRIES + 10):
        previous = live.get("k")
        live["k"] = wheel.schedule("k", 10_000 - n)  # earlier each time
        if previous is not None:
            wheel.cancel()
    assert len(wheel) == 10  # compacted once, the cancelled since kept (a few)
    assert wheel.next_due() == 10_000 - (COMPACT_MIN_ENTRIES + 9)
    assert next(iter(wheel.pop_due(20_000))) == (live["k"], ["k"])
    unowned = TimerWheel(1)  # no owner to ask: cancelled entries stay until they fire
    for n in range(COMPACT_MIN_ENTRIES + 10):
        unowned.schedule("k", 10_000 - n)
        unowned.cancel()
    assert len(unowned) == COMPACT_MIN_ENTRIES + 10


def _session() -> Session:
    s = Session("sess-1", 1_000)
    s.status = Status.TYPING
    s.originated = 1_100
    s.deadline = 6_100
    s.timeout = 5_000
    s.latest = 1_100
    s.window_at = 1_150
    s.reason = ChangeReason.EVENT
    s.remote = Status.PAUSED
    s.remote_expires = 3_000
    s.version = 7
    s.touched = 1_200
    return s


def _messaging_session() -> Session:
    """Every variable part present: target, another remote target, cause and intent."""
    s = _session()
    s.target = OpenMessagingTarget(
        "2f0c6a4e-8d8b-4c8e-9a55-0d4c5b7a1e21", "cust-9", "Email", "Ann \u00e9"
    )
    s.remote_target = AgentTypingTarget(
        "c0b5a0d4-5a3f-4a1e-8d6b-6b7a1c2d3e4f", "0e9a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
    )
    s.cause = ("evt-\ud800-1", 41, Status.TYPING)
    s.intent = Work(
        "sess-1",
        Indicator(Status.TYPING, 1_100, 4_100, 8),
        ChangeReason.EVENT,
        WorkKind.SET,
        8,
        "evt-0",
        40,
        Status.TYPING,
        s.target,
        3_000,
        1_100,
    )
    return s


def test_changelog_round_trip_keeps_every_persisted_field() -> None:
    s = _session()
    key, value = encode(s)
    assert key == b"sess-1"
    assert len(value) == 77  # compact: the common record is the fixed head alone
    assert decode(key, value).persisted() == s.persisted()
    assert tombstone("sess-1") == (b"sess-1", None)
    full = _messaging_session()
    assert decode(*encode(full)).persisted() == full.persisted()


_INT64 = st.integers(-(2**63), 2**63 - 1)
_TEXT = st.text(max_size=300)
_TARGETS = st.one_of(
    st.none(),
    st.builds(AgentTypingTarget, _TEXT, _TEXT),
    st.builds(OpenMessagingTarget, _TEXT, _TEXT, _TEXT, st.none() | _TEXT),
)
_STATUSES = st.sampled_from([None, Status.TYPING, Status.PAUSED])
_CAUSES = st.none() | st.tuples(_TEXT, _INT64, st.sampled_from(Status))


@st.composite
def _intents(draw: st.DrawFn, sid: str, target: object) -> Work | None:
    if draw(st.booleans()):
        return None
    version = draw(_INT64)
    status = draw(_STATUSES)
    desired = None if status is None else Indicator(status, draw(_INT64), draw(_INT64), version)
    cause = draw(_CAUSES)
    return Work(
        sid,
        desired,
        draw(st.sampled_from(ChangeReason)),
        draw(st.sampled_from([WorkKind.SET, WorkKind.REFRESH, WorkKind.CLEAR])),
        version,
        None if cause is None else cause[0],
        None if cause is None else cause[1],
        None if cause is None else cause[2],
        draw(st.sampled_from([None, target]) | _TARGETS),
        draw(_INT64),
        draw(_INT64),
    )


@st.composite
def _sessions(draw: st.DrawFn) -> Session:
    sid = draw(st.from_regex(SESSION_ID_PATTERN, fullmatch=True) | _TEXT)
    times = draw(st.lists(_INT64, min_size=10, max_size=10))
    s = Session(sid, times[0])
    s.status, s.remote = draw(_STATUSES), draw(_STATUSES)
    s.reason = draw(st.sampled_from(ChangeReason))
    (s.originated, s.deadline, s.timeout, s.latest, s.window_at) = times[1:6]
    s.remote_expires, s.version, s.touched = times[6:9]
    s.target = draw(_TARGETS)
    s.remote_target = draw(st.sampled_from([None, s.target]) | _TARGETS)
    s.cause = draw(_CAUSES)
    s.intent = draw(_intents(sid, s.target))
    return s


@settings(max_examples=300)
@given(session=_sessions())
def test_changelog_round_trips_any_session(session: Session) -> None:
    assert decode(*encode(session)).persisted() == session.persisted()


def test_a_version_floor_is_an_idle_session_record_of_the_current_format() -> None:
    key, value = floor_record("s1", 7, 1_000)
    session = decode(key, value)
    assert (session.sid, session.version, session.touched) == ("s1", 7, 1_000)
    assert (session.status, session.remote, session.intent, session.cause) == (
        None,
        None,
        None,
        None,
    )
    assert len(value) == 77  # the head alone: as small as a record gets


def _with(index: int, replacement: int) -> bytes:
    """A valid changelog value with byte `index` replaced."""
    value = bytearray(encode(_session())[1])
    value[index] = replacement
    return bytes(value)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b'[1, "typing"]',
        encode(_session())[1][:-1],  # truncated
        encode(_session())[1] + b"\x00",
        encode(_messaging_session())[1][:-1],  # variable part truncated
        encode(_messaging_session())[1] + b"\x00",
        _with(0, 2),  # a format this build does not know
        _with(1, 3),  # status
        _with(2, 4),  # reason
        _with(3, 9),  # remote status
        _with(4, 64),  # unknown flags
        _with(4, 1),  # a target announced but missing
    ],
)
def test_changelog_rejects_corrupt_values(value: bytes) -> None:
    with pytest.raises(ChangelogError):
        decode(b"sess-1", value)


def test_changelog_rejects_a_key_that_is_not_utf8() -> None:
    with pytest.raises(ChangelogError, match="key"):
        decode(b"\xff", encode(_session())[1])


def test_latest_sessions_last_record_wins_and_tombstones_forget() -> None:
    a1 = _session()
    a2 = _session()
    a2.version = 8
    b = Session("sess-2", 5)
    records = [encode(a1), encode(b), encode(a2), tombstone("sess-2"), tombstone("nobody")]
    sessions = latest_sessions(records)
    assert list(sessions) == ["sess-1"]
    assert sessions["sess-1"].version == 8
    # a tombstone followed by a new value brings the key back
    assert list(latest_sessions([*records, encode(b)])) == ["sess-1", "sess-2"]


def test_crm_event_id_is_deterministic_and_distinguishes_inputs() -> None:
    first = crm_event_id("s", 1, 2, CrmStatus.TYPING)
    assert first == crm_event_id("s", 1, 2, CrmStatus.TYPING)
    others = {
        crm_event_id("t", 1, 2, CrmStatus.TYPING),
        crm_event_id("s", 9, 2, CrmStatus.TYPING),
        crm_event_id("s", 1, 3, CrmStatus.TYPING),
        crm_event_id("s", 1, 2, CrmStatus.CLEARED),
    }
    assert first not in others
    assert len(others) == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"suppression_window_ms": -1},
        {"refresh_fraction": 0.0},
        {"refresh_fraction": 0.75},
        {"timer_resolution_ms": 0},
        {"timer_resolution_ms": 600},
        {"idle_evict_ms": 59_999},
        {"version_memory_ms": 300_000},
        {"dedupe_capacity": 0},
        {"retry_base_ms": 0},
        {"retry_base_ms": 20_000},
        {"min_set_lifetime_ms": -1},
    ],
)
def test_config_rejects_unsafe_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        EngineConfig(**kwargs)  # type: ignore[arg-type]


def test_config_from_settings_takes_window_and_matrix() -> None:
    matrix = TimeoutMatrix.model_validate(
        {"typing": {"customer": 9000, "agent": 8000, "bot": 7000}}
    )
    settings = TypingSettings(suppression_window_ms=700, timeout_matrix=matrix)
    config = EngineConfig.from_settings(settings)
    assert config.suppression_window_ms == 700
    assert config.timeouts == matrix
