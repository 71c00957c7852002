"""Messaging targets end to end (DESIGN §2b): the processor on the real broker drives the
emulator's agent-typing and Open Messaging endpoints, judged from the emulator's record of
every accepted call ("shown until" = call time + duration) and from the output topics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pipeline import (
    InProcess,
    Producer,
    eventually,
    make_settings,
    now_ms,
    read_json,
    start_in_process,
    typing_event,
)

from processor.clock import ManualClock
from processor.domain import Outcome, SinkResult
from processor.emulator.testing import EmulatorHandle
from processor.models import TypingEvent
from processor.runtime.reconciler import Reconciler
from processor.settings import GenesysSettings, TypingSettings
from processor.sink import GenesysSink, SinkConfig
from processor.state import EngineConfig, PartitionStore

CONV = "c0b5a0d4-5a3f-4a1e-8d6b-6b7a1c2d3e4f"
COMM = "0e9a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
INTEGRATION = "2f0c6a4e-8d8b-4c8e-9a55-0d4c5b7a1e21"
AGENT = {"kind": "agent_typing", "conversation_id": CONV, "communication_id": COMM}
OPEN = {"kind": "open_messaging", "integration_id": INTEGRATION, "from_id": "cust-7"}
TIMEOUT_MS = 2000


@pytest.fixture
async def stack(bootstrap_servers: str, emulator: EmulatorHandle) -> AsyncIterator[InProcess]:
    running = await start_in_process(make_settings(bootstrap_servers, emulator))
    try:
        yield running
    finally:
        await running.close()


async def type_for(
    producer: Producer, session_id: str, target: dict[str, Any], seconds: float
) -> tuple[int, int]:
    """Keystrokes every 400 ms, then `stopped`; (last keystroke's deadline, stop time)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    deadline = 0
    while loop.time() < end:
        event = typing_event(session_id, timeout_ms=TIMEOUT_MS, target=target)
        await producer.send(event)
        deadline = event["occurred_at"] + TIMEOUT_MS
        await asyncio.sleep(0.4)  # pacing the keystrokes, not synchronisation
    stop = typing_event(session_id, "stopped", target=target)
    await producer.send(stop)
    return deadline, stop["occurred_at"]


def assert_gap_free_and_bounded(calls: list[dict[str, Any]], deadline: int) -> None:
    assert calls, "no typing call reached the service"
    covered = calls[0]["shown_until"]
    for call in calls[1:]:
        assert call["at_ms"] <= covered, f"a gap from {covered} to {call['at_ms']}"
        covered = max(covered, call["shown_until"])
    assert covered <= deadline + 1000, "shown more than a second past the deadline"


@pytest.mark.parametrize(
    ("target", "query"),
    [
        (AGENT, {"conversation_id": CONV}),
        (OPEN, {"integration_id": INTEGRATION, "from_id": "cust-7"}),
    ],
    ids=["agent_typing", "open_messaging"],
)
async def test_typing_is_shown_without_a_gap_and_lapses_after_the_stop(
    bootstrap_servers: str,
    emulator: EmulatorHandle,
    stack: InProcess,
    target: dict[str, Any],
    query: dict[str, str],
) -> None:
    emulator.create_conversation(CONV, [COMM])
    emulator.create_integration(INTEGRATION)
    typing = stack.settings.typing
    async with Producer(bootstrap_servers, typing.input_topic) as producer:
        deadline, stopped_at = await type_for(producer, "m-1", target, 4.5)

    async def cleared_recorded() -> bool:
        crm = await read_json(bootstrap_servers, typing.crm_topic)
        return any(c["status"] == "cleared" for c in crm)

    await eventually(cleared_recorded, 30, "the lapse reached the CRM topic")
    calls = emulator.typing(**query)
    assert_gap_free_and_bounded(calls, deadline)
    assert all(call["at_ms"] <= stopped_at + 200 for call in calls), "a call after the stop"
    assert len(calls) >= 2  # refreshed while typing went on (4.5 s against 2 s timeouts)
    crm = await read_json(bootstrap_servers, typing.crm_topic)
    unique = {c["event_id"]: c for c in crm}.values()
    assert sorted(c["status"] for c in unique) == ["cleared"] + ["typing"] * len(calls)
    cleared = next(c for c in unique if c["status"] == "cleared")
    assert cleared["reason"] == "stopped"
    versions = sorted(c["version"] for c in unique)
    assert versions == list(range(1, len(calls) + 2))
    audits = await read_json(bootstrap_servers, typing.audit_topic)
    assert "lapsed" in {a["result"] for a in audits}


async def test_unsafe_ids_are_dead_letters_and_unknown_ids_do_not_stop_the_partition(
    bootstrap_servers: str, emulator: EmulatorHandle, stack: InProcess
) -> None:
    emulator.create_conversation(CONV, [COMM])
    typing = stack.settings.typing
    unsafe = typing_event(
        "m-2",
        timeout_ms=5000,
        target={**AGENT, "conversation_id": "../../api/v2/users"},
    )
    unknown = typing_event(
        "m-3",
        timeout_ms=5000,
        target={**AGENT, "conversation_id": "9d2c0b5a-5a3f-4a1e-8d6b-6b7a1c2d3e4f"},
    )
    async with Producer(bootstrap_servers, typing.input_topic) as producer:
        await producer.send(unsafe)
        await producer.send(unknown)
        after = typing_event("m-4", timeout_ms=5000, target=AGENT)
        after["occurred_at"] = now_ms()
        await producer.send(after)
    await eventually(
        lambda: len(emulator.typing(conversation_id=CONV)) >= 1,
        30,
        "the valid event after the unknown conversation went through",
    )
    # (another partition's: written in its own time, not before that call)
    letters: list[dict[str, Any]] = []

    async def dead_lettered() -> bool:
        letters[:] = await read_json(bootstrap_servers, typing.dlq_topic)
        return bool(letters)

    await eventually(dead_lettered, 20, "the unsafe id dead-lettered")
    assert [letter["reason"] for letter in letters] == ["invalid_target_id"]

    async def unknown_audited() -> bool:
        audits = await read_json(bootstrap_servers, typing.audit_topic)
        return any(
            a["event_id"] == unknown["event_id"] and a["result"] == "session_not_found"
            for a in audits
        )

    await eventually(unknown_audited, 30, "the unknown conversation audited as not found")
    assert (
        emulator.count(
            "POST",
            "/api/v2/conversations/messages/{conversationId}"
            "/communications/{communicationId}/typing",
            404,
        )
        == 1
    )


async def test_a_call_answered_5xx_is_recorded_and_lapses_when_typing_stops(
    bootstrap_servers: str, emulator: EmulatorHandle, stack: InProcess
) -> None:
    """Every request answered 5xx: no call can be known to have landed, nor read back, and
    yet each may show typing (a 5xx may come after the request took effect). The CRM hears
    `typing` for the call and, when typing stops, `cleared` once it would have lapsed: the
    stop alone used to leave it with neither."""
    emulator.create_conversation(CONV, [COMM])
    emulator.set_faults(error_rate=1.0, seed=7)
    typing = stack.settings.typing
    async with Producer(bootstrap_servers, typing.input_topic) as producer:
        typed = typing_event("m-5", timeout_ms=3000, target=AGENT)
        await producer.send(typed)

        async def failed() -> bool:
            audits = await read_json(bootstrap_servers, typing.audit_topic)
            return any(
                a["event_id"] == typed["event_id"] and a["result"] == "failed" for a in audits
            )

        await eventually(failed, 30, "the call answered 5xx audited as failed")
        stop = typing_event("m-5", "stopped", target=AGENT)
        await producer.send(stop)
    records: list[dict[str, Any]] = []

    async def cleared() -> bool:
        crm = await read_json(bootstrap_servers, typing.crm_topic)
        records[:] = {c["event_id"]: c for c in crm if c["session_id"] == "m-5"}.values()
        return any(c["status"] == "cleared" for c in records)

    await eventually(cleared, 30, "the lapse reached the CRM topic")
    records.sort(key=lambda c: c["version"])
    assert [c["version"] for c in records] == list(range(1, len(records) + 1))
    assert [c["status"] for c in records] == ["typing"] * (len(records) - 1) + ["cleared"]
    assert records[-1]["reason"] == "stopped"
    assert emulator.typing(conversation_id=CONV) == []  # none was known to land
    audits = await read_json(bootstrap_servers, typing.audit_topic)
    mine = [a["result"] for a in audits if a["event_id"] == typed["event_id"]]
    assert mine[:2] == ["failed", "applied"]
    assert [a["result"] for a in audits if a["event_id"] == stop["event_id"]] == ["lapsed"]


async def _typing_call_after(
    emulator: EmulatorHandle, timeout_ms: int, waited_ms: int
) -> tuple[SinkResult, int]:
    """A typing event with `timeout_ms` taken as work at T0, its call going out `waited_ms`
    later (as one that waited for its token or a slot): its result and the `duration`
    the emulator accepted."""
    emulator.create_conversation(CONV, [COMM])
    clock = ManualClock(now_ms())
    start = clock.now_ms()
    store = PartitionStore(0, EngineConfig(), clock)
    event = typing_event("s-wait", timeout_ms=timeout_ms, target=AGENT, occurred_at=start)
    store.on_event(TypingEvent.model_validate(event), 0)
    [work] = store.take_work(1)
    clock.advance(waited_ms)
    done: asyncio.Future[SinkResult] = asyncio.get_running_loop().create_future()
    async with GenesysSink(SinkConfig.from_settings(*_genesys(emulator)), clock=clock) as sink:
        recorded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        recorded.set_result(None)
        Reconciler(sink, max_in_flight=4).launch(work, 0, recorded, done.set_result)
        async with asyncio.timeout(10):
            result = await done
    [call] = emulator.typing(conversation_id=CONV)
    return result, call["duration"]


def _genesys(emulator: EmulatorHandle) -> tuple[GenesysSettings, TypingSettings]:
    settings = make_settings("127.0.0.1:9", emulator)
    return settings.genesys, settings.typing


async def test_a_call_sent_late_carries_the_longest_duration_while_the_deadline_is_far(
    emulator: EmulatorHandle,
) -> None:
    """DESIGN §2b: `duration` = the deadline minus now, clamped to [1000, 5000]. With the
    deadline 20 s off, a call that goes out 400 ms after its work was taken still sends
    5000 (shown until 5 s after it goes out, long before the deadline), not 4600."""
    result, duration = await _typing_call_after(emulator, timeout_ms=20_000, waited_ms=400)
    assert result.outcome is Outcome.APPLIED
    assert duration == 5000


async def test_a_call_sent_late_carries_what_is_left_until_a_near_deadline(
    emulator: EmulatorHandle,
) -> None:
    """The deadline 3 s off, a call that goes out 400 ms late sends the 2600 ms left, so
    that it shows typing no longer than wanted (I1)."""
    result, duration = await _typing_call_after(emulator, timeout_ms=3000, waited_ms=400)
    assert result.outcome is Outcome.APPLIED
    assert duration == 2600
