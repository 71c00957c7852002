"""The processor end to end in this process: real broker, real emulator over HTTP."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from pipeline import (
    InProcess,
    Monotonic,
    NotUtf8,
    Producer,
    allow_undecodable_headers,
    eventually,
    make_settings,
    now_ms,
    produce_batch,
    read_json,
    send_with_bad_crc,
    start_in_process,
    throttled_lines,
    typing_event,
    with_crc,
)

from processor.emulator.testing import EmulatorHandle
from processor.logs import THROTTLE_S
from processor.runtime.service import MAX_BACKLOG
from processor.settings import ConfigError
from processor.state import EngineConfig
from processor.state.lead import ClearLead


@pytest.fixture
async def running(bootstrap_servers: str, emulator: EmulatorHandle) -> AsyncIterator[InProcess]:
    stack = await start_in_process(make_settings(bootstrap_servers, emulator))
    try:
        yield stack
    finally:
        await stack.close()


@pytest.fixture
async def producer(bootstrap_servers: str, running: InProcess) -> AsyncIterator[Producer]:
    async with Producer(bootstrap_servers, running.settings.typing.input_topic) as p:
        yield p


def indicator(emulator: EmulatorHandle, session_id: str) -> dict[str, Any] | None:
    value: dict[str, Any] | None = emulator.session(session_id)["customAttributes"].get(
        "typingIndicator"
    )
    return value


async def test_typing_sets_then_clears_at_the_timeout(
    emulator: EmulatorHandle, producer: Producer
) -> None:
    emulator.create_session("s-timeout")
    event = typing_event("s-timeout", timeout_ms=1000)
    await producer.send(event)
    await eventually(lambda: indicator(emulator, "s-timeout") is not None, 10, "indicator set")
    shown = indicator(emulator, "s-timeout")
    assert shown is not None
    assert shown["status"] == "typing"
    assert shown["originatedAt"] == event["occurred_at"]
    assert shown["expiresAt"] <= event["occurred_at"] + 1000
    assert shown["version"] == 1
    await eventually(lambda: indicator(emulator, "s-timeout") is None, 10, "indicator cleared")
    history = emulator.history("s-timeout")
    assert [h["typing_indicator"] is None for h in history] == [False, True]
    deadline = event["occurred_at"] + 1000
    cleared_at = history[-1]["at_ms"]
    # an expiry's clear goes out a typical latency early, so that it lands at the deadline;
    # it may land that much early at most (the lead's bound for this timeout)
    lead = ClearLead(EngineConfig().clear_lead_max_ms)
    lead.observe(60_000.0)  # as slow as can be: the lead at its bound
    earliest = deadline - lead.for_timeout(1000)
    assert earliest <= cleared_at <= deadline + 1000, (deadline, cleared_at)


async def test_continuous_typing_never_flickers_and_costs_few_calls(
    emulator: EmulatorHandle, producer: Producer
) -> None:
    emulator.create_session("s-steady")
    started = now_ms()
    typing_ms = 4000
    # a keystroke every 0.3 s, each good for 2 s: a loaded machine may stall the producer
    # for 1.7 s before the typing it sends has really paused
    timeout_ms = 2000
    while now_ms() - started < typing_ms:
        await producer.send(typing_event("s-steady", timeout_ms=timeout_ms))
        await asyncio.sleep(0.3)  # a person typing: pacing the traffic, not synchronisation
    last_typed = now_ms()
    await eventually(lambda: indicator(emulator, "s-steady") is None, 10, "cleared after typing")
    history = emulator.history("s-steady")
    sets = [h for h in history if h["typing_indicator"] is not None]
    clears = [h for h in history if h["typing_indicator"] is None]
    assert len(clears) == 1, history
    assert clears[0]["at_ms"] >= last_typed, "cleared while the participant was still typing"
    for change in sets:
        assert change["typing_indicator"]["expiresAt"] > change["at_ms"], change
    # one set, then at most one refresh per half timeout, then the clear
    assert len(sets) <= 1 + typing_ms // (timeout_ms // 2) + 1, len(sets)
    versions = [h["typing_indicator"]["version"] for h in sets]
    assert versions == list(range(1, len(sets) + 1))
    assert emulator.count("GET", "/api/v2/webchat/sessions/{sessionId}") == 1


async def test_stopped_clears_at_once(emulator: EmulatorHandle, producer: Producer) -> None:
    emulator.create_session("s-stop")
    await producer.send(typing_event("s-stop", timeout_ms=30_000))
    await eventually(lambda: indicator(emulator, "s-stop") is not None, 10, "indicator set")
    stopped = typing_event("s-stop", "stopped")
    await producer.send(stopped)
    await eventually(lambda: indicator(emulator, "s-stop") is None, 5, "cleared by stopped")
    assert emulator.history("s-stop")[-1]["at_ms"] - stopped["occurred_at"] < 1000


async def test_after_a_stall_no_call_goes_out_until_the_group_confirmed_the_member(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """Woken from a stall longer than the lease (the group may have given its partitions to
    another replica meanwhile), the processor makes its next call only once the group has
    accepted a commit of it sent after the stall; it commits for that by itself, so the
    calls resume without waiting for anything else."""
    clock = Monotonic()  # what the membership lease reads
    stack = await start_in_process(make_settings(bootstrap_servers, emulator), clock)
    lease = stack.processor.lease
    proven_at_call: list[float] = []  # the lease's last proof as each PATCH goes out
    apply = stack.sink.apply

    async def watched_apply(*args: Any, **kwargs: Any) -> Any:
        proven_at_call.append(lease.proven_at)
        return await apply(*args, **kwargs)

    stack.sink.apply = watched_apply  # type: ignore[method-assign]
    try:
        async with Producer(bootstrap_servers, stack.settings.typing.input_topic) as producer:
            emulator.create_session("s-stall")
            await producer.send(typing_event("s-stall", timeout_ms=30_000))
            await eventually(lambda: indicator(emulator, "s-stall") is not None, 10, "set")
            assert len(proven_at_call) == 1
            clock.now += 10  # the process stood still for 10 s: the lease lapsed
            stalled_at = clock.now
            await producer.send(typing_event("s-stall", "stopped"))
            await eventually(lambda: indicator(emulator, "s-stall") is None, 10, "cleared")
            assert clock.now == stalled_at  # nothing but a commit ended the hold
            assert proven_at_call[0] < stalled_at
            assert proven_at_call[1:] == [stalled_at]  # the clear: after a commit since
    finally:
        await stack.close()


async def test_a_commit_that_renews_the_lease_resumes_fetching_before_the_next_fetch(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """While the lease has lapsed the partitions are paused (nothing is fetched for a
    member that may have lost them); the commit that renews it resumes them before the
    consumer fetches again. A fetch with every partition still paused waits its whole
    timeout for nothing, and the input waits with it."""
    clock = Monotonic()  # what the membership lease reads
    stack = await start_in_process(make_settings(bootstrap_servers, emulator), clock)
    processor = stack.processor
    consumer = processor._consumer
    assert consumer is not None
    getmany = consumer.getmany
    fetches = 0
    # fetches made with a partition paused that nothing holds (lease valid, short backlog)
    needlessly_paused: list[set[Any]] = []

    async def watched_getmany(*args: Any, **kwargs: Any) -> Any:
        nonlocal fetches
        fetches += 1
        paused = consumer.paused()
        workers = processor.workers.values()
        if (
            paused
            and processor.lease.left() > 0
            and all(not w.holding and w.backlog < MAX_BACKLOG // 2 for w in workers)
        ):
            needlessly_paused.append(paused)
        return await getmany(*args, **kwargs)

    consumer.getmany = watched_getmany  # type: ignore[method-assign]
    try:
        await eventually(lambda: fetches >= 1, 10, "a fetch")
        clock.now += 10  # the process stood still: the lease lapsed
        lapsed_at = clock.now
        await eventually(lambda: processor.lease.proven_at == lapsed_at, 10, "renewed")
        seen = fetches
        await eventually(lambda: fetches >= seen + 3, 10, "fetches after the renewal")
        assert consumer.paused() == set()
        assert needlessly_paused == []
    finally:
        await stack.close()


async def test_closed_session_gets_no_patch_and_an_audit_record(
    emulator: EmulatorHandle, producer: Producer, running: InProcess, bootstrap_servers: str
) -> None:
    emulator.create_session("s-closed", state="closed")
    event = typing_event("s-closed", timeout_ms=5000)
    await producer.send(event)
    audit_topic = running.settings.typing.audit_topic

    async def audited() -> bool:
        records = await read_json(bootstrap_servers, audit_topic)
        return any(
            r["session_id"] == "s-closed" and r["result"] == "session_not_connected"
            for r in records
        )

    await eventually(audited, 10, "audit record for the closed session")
    assert emulator.count("PATCH", "/api/v2/webchat/sessions/{sessionId}") == 0
    assert emulator.history("s-closed") == []


@pytest.mark.parametrize("compression", ["gzip", "snappy", "lz4", "zstd"])
async def test_compressed_input_is_processed(
    emulator: EmulatorHandle, running: InProcess, bootstrap_servers: str, compression: str
) -> None:
    """Producers often compress their batches; the broker keeps them so. Without the
    codec such a batch could never be read, only fetched again."""
    session_id = f"s-{compression}"
    emulator.create_session(session_id)
    sender = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, compression_type=compression)
    await sender.start()
    try:
        await sender.send_and_wait(
            running.settings.typing.input_topic,
            orjson.dumps(typing_event(session_id, timeout_ms=30_000)),
            key=session_id.encode(),
        )
    finally:
        await sender.stop()
    await eventually(lambda: indicator(emulator, session_id) is not None, 10, "indicator set")


async def test_malformed_input_goes_to_the_dlq_and_processing_goes_on(
    emulator: EmulatorHandle, producer: Producer, running: InProcess, bootstrap_servers: str
) -> None:
    emulator.create_session("s-after-bad")
    await producer.send_raw(b"s-after-bad", b"{this is not json")
    await producer.send(typing_event("s-after-bad", timeout_ms=2000))
    await eventually(lambda: indicator(emulator, "s-after-bad") is not None, 10, "next event")
    letters = await read_json(bootstrap_servers, running.settings.typing.dlq_topic)
    assert len(letters) == 1
    letter = letters[0]
    assert letter["reason"] == "invalid_json"
    assert base64.b64decode(letter["value_b64"]) == b"{this is not json"
    assert base64.b64decode(letter["key_b64"]) == b"s-after-bad"
    assert letter["topic"] == running.settings.typing.input_topic


async def test_a_flood_of_bad_records_logs_the_first_dead_letter_and_counts_the_rest(
    running: InProcess, producer: Producer, bootstrap_servers: str
) -> None:
    """Every bad record has its dead letter, but the log has the first of a partition's
    letters for a reason, not a line each: a producer of nothing but bad records flooded
    it. The line let through a minute later counts those held back."""
    now = [0.0]

    def lettered(count: int) -> Callable[[], Awaitable[bool]]:
        async def written() -> bool:
            letters = await read_json(bootstrap_servers, running.settings.typing.dlq_topic)
            return len(letters) == count

        return written

    with throttled_lines("processor.runtime.partition", lambda: now[0]) as lines:
        for _ in range(5):
            await producer.send_to(0, b"s-flood", b"{this is not json")
        await eventually(lettered(5), 20, "every bad record dead-lettered")
        now[0] = THROTTLE_S
        await producer.send_to(0, b"s-flood", b"{this is not json")
        # each line is logged before its letter is written
        await eventually(lettered(6), 20, "the next minute's bad record dead-lettered")
    topic = running.settings.typing.input_topic
    assert lines == [
        f"dead letter at {topic}[0]@0: invalid_json",
        f"dead letter at {topic}[0]@5: invalid_json (4 more like it in 60 s not logged)",
    ]


async def test_a_dead_letter_keeps_the_records_timestamp_and_headers_for_a_replay(
    running: InProcess, bootstrap_servers: str
) -> None:
    traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    produced_at = now_ms() - 3_600_000
    sender = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await sender.start()
    try:
        await sender.send_and_wait(
            running.settings.typing.input_topic,
            b"{this is not json",
            key=b"s-replay",
            timestamp_ms=produced_at,
            headers=[("traceparent", traceparent), ("tenant", b"eu-1")],
        )
    finally:
        await sender.stop()

    async def lettered() -> list[dict[str, Any]]:
        return await read_json(bootstrap_servers, running.settings.typing.dlq_topic)

    await eventually(lettered, 20, "the malformed record dead-lettered")
    [letter] = await lettered()
    assert letter["reason"] == "invalid_json"
    assert (letter["record_timestamp"], letter["record_timestamp_type"]) == (
        produced_at,
        "create_time",
    )
    assert letter["headers"] == [
        {"key": "traceparent", "value_b64": base64.b64encode(traceparent).decode()},
        {"key": "tenant", "value_b64": base64.b64encode(b"eu-1").decode()},
    ]
    assert (letter["header_count"], letter["headers_truncated"]) == (2, False)


async def test_a_record_the_client_cannot_decode_is_dead_lettered_and_passed(
    emulator: EmulatorHandle,
    running: InProcess,
    bootstrap_servers: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A header key that is not UTF-8 makes the Kafka client raise inside the fetch, at
    every fetch and after every restart: the record goes to the DLQ with its bytes, the
    records around it are processed, and the processor goes on."""
    allow_undecodable_headers(monkeypatch)
    emulator.create_session("s-poison")
    topic = running.settings.typing.input_topic
    poisoned = orjson.dumps(typing_event("s-poison", timeout_ms=20_000))
    sender = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await sender.start()
    try:
        before = await sender.send_and_wait(
            topic, orjson.dumps(typing_event("s-poison", timeout_ms=20_000)), key=b"s-poison"
        )
        # set before the rest comes: handed over with the stop, it would collapse with it (I3)
        await eventually(lambda: len(emulator.history("s-poison")) == 1, 20, "the typing set")
        poison = await sender.send_and_wait(
            topic,
            poisoned,
            key=b"s-poison",
            headers=[(NotUtf8("trace"), b"x")],
        )
        await sender.send_and_wait(
            topic, orjson.dumps(typing_event("s-poison", "stopped")), key=b"s-poison"
        )
    finally:
        await sender.stop()
    assert poison.partition == before.partition
    await eventually(
        lambda: len(emulator.history("s-poison")) == 2 and indicator(emulator, "s-poison") is None,
        20,
        "the typing before the poison set and the stop after it cleared",
    )
    letters = await read_json(bootstrap_servers, running.settings.typing.dlq_topic)
    assert [(x["reason"], x["partition"], x["offset"]) for x in letters] == [
        ("undecodable_record", poison.partition, poison.offset)
    ]
    assert letters[0]["detail"] == "a header key is not UTF-8"
    assert base64.b64decode(letters[0]["value_b64"]) == poisoned
    # the key as far as it can be read: its bytes are no text
    assert letters[0]["headers"] == [{"key": "\ufffd\ufffd", "value_b64": "eA=="}]
    assert not running.task.done()


async def test_a_backlog_with_an_undecodable_record_loses_none_of_the_others(
    emulator: EmulatorHandle, bootstrap_servers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written before the processor starts, the backlog comes in one fetch, across
    partitions: the failed fetch drops what it had read of the others, which the processor
    must fetch again, not skip. The client cannot read the rest of the culprit's batch
    either; the processor reads it record by record: only the culprit is dead-lettered,
    every other record is processed."""
    allow_undecodable_headers(monkeypatch)
    # (a budget that pays for every clear at once: the sessions' indicators all come due
    # together, and the planner would rightly show only those it can clear in time)
    settings = make_settings(bootstrap_servers, emulator, api_rate_per_minute=6000)
    sessions = [f"s-backlog-{i}" for i in range(24)]
    poisoned = sessions[len(sessions) // 2]
    sender = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=50)
    await sender.start()
    try:
        sent = []
        for session_id in sessions:
            emulator.create_session(session_id)
            event = orjson.dumps(typing_event(session_id, timeout_ms=30_000))
            headers = [(NotUtf8("trace"), b"x")] if session_id == poisoned else []
            sent.append(
                await sender.send(
                    settings.typing.input_topic, event, key=session_id.encode(), headers=headers
                )
            )
        await sender.flush()
    finally:
        await sender.stop()
    where = {
        s: (f.result().partition, f.result().offset) for s, f in zip(sessions, sent, strict=True)
    }
    stack = await start_in_process(settings)
    try:

        async def accounted() -> bool:
            letters = await read_json(bootstrap_servers, settings.typing.dlq_topic)
            lettered = {(x["partition"], x["offset"]) for x in letters}
            return all(
                (indicator(emulator, s) is not None) != (where[s] in lettered) for s in sessions
            )

        await eventually(accounted, 30, "every record shown or dead-lettered, not both")
        letters = await read_json(bootstrap_servers, settings.typing.dlq_topic)
        assert [(x["reason"], x["partition"], x["offset"]) for x in letters] == [
            ("undecodable_record", *where[poisoned])
        ]
        assert all(indicator(emulator, s) is not None for s in sessions if s != poisoned)
    finally:
        await stack.close()


async def test_a_timestamp_past_64_bits_wraps_as_the_client_reads_it(
    emulator: EmulatorHandle, bootstrap_servers: str, running: InProcess
) -> None:
    """A foreign producer's batch whose base timestamp plus a record's delta passes 64
    bits: the client wraps the sum (as Kafka does), and so does the record by record read
    past its undecodable record. Read as a number past 64 bits, the timestamp made that
    record's dead letter invalid, and the partition stopped there after every restart."""
    for session_id in ("s-wrap", "s-wrap-after"):
        emulator.create_session(session_id)
    topic = running.settings.typing.input_topic
    builder = _DefaultRecordBatchBuilderPy(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 16,
    )
    event = orjson.dumps(typing_event("s-wrap", timeout_ms=30_000))
    builder.append(0, timestamp=0, key=b"s-wrap", value=event, headers=[])
    builder.append(1, timestamp=1000, key=b"s-wrap", value=b"{", headers=[(NotUtf8("t"), b"")])
    batch = bytearray(builder.build())
    base = 2**63 - 10
    struct.pack_into(">qq", batch, 27, base, base)  # base and max timestamp
    first = await produce_batch(bootstrap_servers, topic, 0, with_crc(batch))
    after = orjson.dumps(typing_event("s-wrap-after", timeout_ms=30_000))
    async with Producer(bootstrap_servers, topic) as producer:
        await producer.send_to(0, b"s-wrap-after", after)
    await eventually(
        lambda: all(indicator(emulator, s) is not None for s in ("s-wrap", "s-wrap-after")),
        20,
        "the records before and after the undecodable one applied",
    )
    letters = await read_json(bootstrap_servers, running.settings.typing.dlq_topic)
    assert [(x["reason"], x["offset"], x["record_timestamp"]) for x in letters] == [
        ("undecodable_record", first + 1, base + 1000 - 2**64)
    ]
    assert not running.task.done()


async def test_a_batch_that_fails_its_crc_is_dead_lettered_not_fetched_for_ever(
    emulator: EmulatorHandle, bootstrap_servers: str
) -> None:
    settings = make_settings(bootstrap_servers, emulator)
    topic = settings.typing.input_topic
    for session_id in ("s-crc-a", "s-crc-b", "s-crc-c"):
        emulator.create_session(session_id)

    def event(session_id: str) -> bytes:
        return orjson.dumps(typing_event(session_id, timeout_ms=30_000))

    async with Producer(bootstrap_servers, topic) as producer:
        await producer.send_to(0, b"s-crc-a", event("s-crc-a"))
    corrupted = event("s-crc-b")
    corrupt = await send_with_bad_crc(bootstrap_servers, topic, b"s-crc-b", corrupted)
    async with Producer(bootstrap_servers, topic) as producer:
        await producer.send_to(0, b"s-crc-c", event("s-crc-c"))
    stack = await start_in_process(settings)
    try:
        await eventually(
            lambda: all(indicator(emulator, s) is not None for s in ("s-crc-a", "s-crc-c")),
            30,
            "the records on either side of the corrupt batch shown",
        )

        async def lettered() -> bool:
            letters = await read_json(bootstrap_servers, settings.typing.dlq_topic)
            return [(x["reason"], x["offset"], x["value_b64"]) for x in letters] == [
                (
                    "undecodable_record",
                    corrupt.offset,
                    base64.b64encode(corrupted).decode(),
                )
            ]

        await eventually(lettered, 10, "the corrupt record dead-lettered with its bytes")
        assert indicator(emulator, "s-crc-b") is None
    finally:
        await stack.close()


async def test_crm_records_match_applied_changes_one_to_one(
    emulator: EmulatorHandle, producer: Producer, running: InProcess, bootstrap_servers: str
) -> None:
    sessions = [f"s-crm-{i}" for i in range(6)]
    for session_id in sessions:
        emulator.create_session(session_id)
    for i, session_id in enumerate(sessions):
        await producer.send(typing_event(session_id, timeout_ms=1000))
        if i % 2:
            await producer.send(typing_event(session_id, "stopped"))
    typed_only = sessions[::2]  # the others' typing and stopped coalesce: no call at all
    await eventually(
        lambda: (
            all(len(emulator.history(s)) == 2 for s in typed_only)
            and all(indicator(emulator, s) is None for s in sessions)
        ),
        15,
        "every indicator set and cleared",
    )
    crm_topic = running.settings.typing.crm_topic

    def applied() -> set[tuple[str, int | None, str]]:
        changes = set()
        for session_id in sessions:
            for version, change in enumerate(emulator.history(session_id), start=1):
                shown = change["typing_indicator"]
                status = "cleared" if shown is None else shown["status"]
                changes.add((session_id, version, status))
        return changes

    async def crm_complete() -> bool:
        records = await read_json(bootstrap_servers, crm_topic)
        return len(records) >= len(applied())

    await eventually(crm_complete, 10, "CRM records for every change")
    records = await read_json(bootstrap_servers, crm_topic)
    got = [(r["session_id"], r["version"], r["status"]) for r in records]
    assert len(got) == len(set(got)), "duplicate CRM records"
    assert set(got) == applied()
    for record in records:
        assert record["event"] == "typing_indicator_update"
        assert record["reason"] in {"event", "stopped", "expired"}
    assert len({r["event_id"] for r in records}) == len(records)


async def test_an_audit_file_that_cannot_be_written_stops_start_up(
    bootstrap_servers: str, emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """No restart makes it writable: one configuration error, not a restart loop."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    settings = make_settings(bootstrap_servers, emulator, audit_log_file=blocker / "audit.jsonl")
    with pytest.raises(ConfigError, match=r"^TYPING_AUDIT_LOG_FILE is invalid: cannot write"):
        await start_in_process(settings)


async def test_audit_file_holds_the_audit_topic_as_json_lines(
    bootstrap_servers: str, emulator: EmulatorHandle, tmp_path: Path
) -> None:
    path = tmp_path / "audit" / "decisions.jsonl"  # the folder is created at start-up
    stack = await start_in_process(make_settings(bootstrap_servers, emulator, audit_log_file=path))
    try:
        emulator.create_session("s-file")
        async with Producer(bootstrap_servers, stack.settings.typing.input_topic) as producer:
            await producer.send(typing_event("s-file", timeout_ms=5000))
            await producer.send(typing_event("s-file", timeout_ms=5000))

        def lines() -> list[dict[str, Any]]:
            return [orjson.loads(line) for line in path.read_bytes().splitlines()]

        # written as decisions are made, not only when the processor stops
        await eventually(
            lambda: path.exists() and {r["result"] for r in lines()} >= {"applied", "suppressed"},
            10,
            "applied and suppressed decisions in the audit file",
        )
    finally:
        await stack.close()
    in_file = lines()
    on_topic = await read_json(bootstrap_servers, stack.settings.typing.audit_topic)
    assert in_file == on_topic
    assert {r["session_id"] for r in in_file} == {"s-file"}
