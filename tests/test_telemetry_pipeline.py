"""Telemetry end to end: real broker, real emulator over HTTP, the processor in this process.

Spans go to an in-memory exporter; metrics are scraped from the real `/metrics` endpoint;
readiness is probed over HTTP while a partition's restore is held.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pipeline import (
    InProcess,
    PoisonedProcessor,
    eventually,
    make_settings,
    read_topic,
    typing_event,
)
from prometheus_client.parser import text_string_to_metric_families

from processor.asgi import serve_in_background
from processor.emulator.testing import EmulatorHandle
from processor.runtime.service import TypingProcessor
from processor.settings import Settings
from processor.sink.client import GenesysSink
from processor.sink.config import SinkConfig
from processor.state import PartitionStore
from processor.telemetry import OpsEndpoint, Telemetry
from processor.telemetry.propagation import header


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def telemetry(spans: InMemorySpanExporter) -> Iterator[Telemetry]:
    made = Telemetry.from_environment({}, span_processors=[SimpleSpanProcessor(spans)])
    try:
        yield made
    finally:
        made.shutdown()


async def start(
    settings: Settings, telemetry: Telemetry, kind: type[TypingProcessor] = TypingProcessor
) -> InProcess:
    """The processor with telemetry, started but not awaited ready."""
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    telemetry.instrument_sink(sink)
    processor = kind(settings, sink, telemetry=telemetry)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    return InProcess(settings, processor, sink, task, stop)


async def until_ready(stack: InProcess) -> None:
    ready = asyncio.ensure_future(stack.processor.wait_ready())
    await asyncio.wait({ready, stack.task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if stack.task.done():
        stack.task.result()
    assert stack.processor.ready, "processor was not assigned partitions within 60 s"


@pytest.fixture
async def traced(
    bootstrap_servers: str, emulator: EmulatorHandle, telemetry: Telemetry
) -> AsyncIterator[InProcess]:
    stack = await start(make_settings(bootstrap_servers, emulator), telemetry)
    try:
        await until_ready(stack)
        yield stack
    finally:
        await stack.close()


@pytest.fixture
async def endpoint(telemetry: Telemetry) -> AsyncIterator[httpx.AsyncClient]:
    ops = OpsEndpoint(telemetry)
    async with (
        ops.monitoring(),
        serve_in_background(ops.app, port=0, name="ops") as listening,
        httpx.AsyncClient(base_url=listening.base_url, timeout=10) as client,
    ):
        yield client


async def produce(
    bootstrap: str, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


def trace_of(record: ConsumerRecord[bytes, bytes]) -> str | None:
    """The trace id in a record's `traceparent` header."""
    parent = header(record.headers, "traceparent")
    return None if parent is None else parent.split("-")[1]


def finished(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    return list(spans.get_finished_spans())


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


async def records_for(
    bootstrap: str, topic: str, session_id: str, count: int = 1
) -> list[ConsumerRecord[bytes, bytes]]:
    found: list[ConsumerRecord[bytes, bytes]] = []

    async def seen() -> bool:
        found[:] = [r for r in await read_topic(bootstrap, topic) if r.key == session_id.encode()]
        return len(found) >= count

    await eventually(seen, 20, f"{count} record(s) for {session_id} on {topic}", 0.2)
    return found


async def test_a_traceparent_is_continued_through_genesys_calls_crm_and_audit(
    bootstrap_servers: str,
    emulator: EmulatorHandle,
    traced: InProcess,
    spans: InMemorySpanExporter,
) -> None:
    typing = traced.settings.typing
    emulator.create_session("s-traced")
    remote_trace = secrets.token_hex(16)
    remote_span = secrets.token_hex(8)
    event = typing_event("s-traced", timeout_ms=60_000)
    await produce(
        bootstrap_servers,
        typing.input_topic,
        b"s-traced",
        orjson.dumps(event),
        [("traceparent", f"00-{remote_trace}-{remote_span}-01".encode()), ("tracestate", b"k=v")],
    )
    crm = await records_for(bootstrap_servers, typing.crm_topic, "s-traced")
    audit = await records_for(bootstrap_servers, typing.audit_topic, "s-traced")

    # one processing span, child of the producer's span, carrying the decision
    def processing() -> list[ReadableSpan]:
        return [
            s
            for s in finished(spans)
            if s.name == f"{typing.input_topic} process"
            and (s.attributes or {}).get("typing.session_id") == "s-traced"
        ]

    await eventually(lambda: len(processing()) == 1, 10, "the processing span ended")
    (process,) = processing()
    assert process.kind is SpanKind.CONSUMER
    assert format(trace_id(process), "032x") == remote_trace
    assert parent_id(process) == int(remote_span, 16)
    assert process.parent is not None
    assert process.parent.is_remote
    attributes = dict(process.attributes or {})
    assert attributes["typing.session_id"] == "s-traced"
    assert attributes["typing.status"] == "typing"
    assert attributes["typing.decision"] == "applied"
    assert attributes["messaging.destination.partition.id"] == str(crm[0].partition)
    assert attributes["messaging.kafka.offset"] == orjson.loads(audit[0].value)["offset"]

    # the reconciliation is the event's child; Genesys HTTP calls are the reconciliation's
    all_spans = finished(spans)
    applies = [s for s in all_spans if parent_id(s) == span_id(process) and s.name == "genesys set"]
    assert len(applies) == 1
    calls = [
        s for s in all_spans if parent_id(s) == span_id(applies[0]) and s.kind is SpanKind.CLIENT
    ]
    assert calls, "no HTTP span under the reconciliation"
    assert "PATCH" in {s.name.split()[0] for s in calls}
    assert all(trace_id(s) == int(remote_trace, 16) for s in [*applies, *calls])
    for s in calls:  # no credentials on spans
        assert "Bearer" not in str(dict(s.attributes or {}))

    # CRM and audit records carry the same trace in their headers; audit names it too
    assert [trace_of(r) for r in crm] == [remote_trace]
    assert [trace_of(r) for r in audit] == [remote_trace]
    assert orjson.loads(audit[0].value)["trace_id"] == remote_trace
    assert header(audit[0].headers, "tracestate") == "k=v"
    # the audit record is the processing span's own output; the CRM record has a
    # PRODUCER span (under the reconciliation that applied the change)
    assert header(audit[0].headers, "traceparent") == (
        f"00-{remote_trace}-{format(span_id(process), '016x')}-01"
    )
    (publish,) = [
        s for s in all_spans if s.kind is SpanKind.PRODUCER and trace_id(s) == trace_id(process)
    ]
    assert publish.name == f"{typing.crm_topic} publish"
    assert parent_id(publish) == span_id(applies[0])
    assert header(crm[0].headers, "traceparent") == (
        f"00-{remote_trace}-{format(span_id(publish), '016x')}-01"
    )


async def test_events_without_a_parent_start_a_trace_and_dead_letters_keep_theirs(
    bootstrap_servers: str,
    emulator: EmulatorHandle,
    traced: InProcess,
    spans: InMemorySpanExporter,
) -> None:
    typing = traced.settings.typing
    emulator.create_session("s-root")
    await produce(
        bootstrap_servers,
        typing.input_topic,
        b"s-root",
        orjson.dumps(typing_event("s-root", timeout_ms=60_000)),
        [],
    )
    remote_trace = secrets.token_hex(16)
    await produce(
        bootstrap_servers,
        typing.input_topic,
        b"s-bad",
        b"{not json",
        [("traceparent", f"00-{remote_trace}-{secrets.token_hex(8)}-01".encode())],
    )
    (audit,) = await records_for(bootstrap_servers, typing.audit_topic, "s-root")
    (letter,) = await records_for(bootstrap_servers, typing.dlq_topic, "s-bad")

    audit_trace = orjson.loads(audit.value)["trace_id"]
    assert isinstance(audit_trace, str)
    assert len(audit_trace) == 32
    assert trace_of(audit) == audit_trace
    roots = [
        s
        for s in finished(spans)
        if s.name == f"{typing.input_topic} process" and format(trace_id(s), "032x") == audit_trace
    ]
    assert len(roots) == 1
    assert roots[0].parent is None

    assert trace_of(letter) == remote_trace
    dead = [
        s
        for s in finished(spans)
        if s.name == f"{typing.input_topic} process"
        and (s.attributes or {}).get("typing.decision") == "dead_letter"
    ]
    assert [format(trace_id(s), "032x") for s in dead] == [remote_trace]


async def test_an_event_whose_processing_raises_ends_its_span_as_a_dead_letter(
    bootstrap_servers: str,
    emulator: EmulatorHandle,
    telemetry: Telemetry,
    spans: InMemorySpanExporter,
) -> None:
    stack = await start(make_settings(bootstrap_servers, emulator), telemetry, PoisonedProcessor)
    try:
        await until_ready(stack)
        typing = stack.settings.typing
        remote_trace = secrets.token_hex(16)
        await produce(
            bootstrap_servers,
            typing.input_topic,
            b"victim",
            orjson.dumps(typing_event("victim", event_id="poison")),
            [("traceparent", f"00-{remote_trace}-{secrets.token_hex(8)}-01".encode())],
        )
        await records_for(bootstrap_servers, typing.dlq_topic, "victim")
    finally:
        await stack.close()
    (span,) = [
        s
        for s in finished(spans)
        if s.name == f"{typing.input_topic} process" and format(trace_id(s), "032x") == remote_trace
    ]
    attributes = span.attributes or {}
    assert attributes.get("typing.decision") == "dead_letter"
    assert attributes.get("typing.dlq.reason") == "processing_error"
    assert attributes.get("typing.session_id") == "victim"  # the event's own span, ended


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset((k, v) for k, v in sample.labels.items() if k != "otel_scope_name")
            out[sample.name, labels] = out.get((sample.name, labels), 0.0) + sample.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and wanted <= ls)


@pytest.fixture
async def throttled(
    bootstrap_servers: str, emulator: EmulatorHandle, telemetry: Telemetry
) -> AsyncIterator[InProcess]:
    """The processor with a client budget of 24 calls a minute: two at once, then one
    every 2.5 s (so the third Genesys call of a scenario waits for budget)."""
    settings = make_settings(bootstrap_servers, emulator, api_rate_per_minute=24)
    stack = await start(settings, telemetry)
    try:
        await until_ready(stack)
        yield stack
    finally:
        await stack.close()


async def test_metrics_endpoint_counts_what_the_scenario_did(
    bootstrap_servers: str,
    emulator: EmulatorHandle,
    throttled: InProcess,
    endpoint: httpx.AsyncClient,
) -> None:
    typing = throttled.settings.typing
    emulator.create_session("s-metrics")
    async with AIOKafkaProducer(bootstrap_servers=bootstrap_servers) as producer:
        first = typing_event("s-metrics", timeout_ms=60_000)
        await producer.send_and_wait(typing.input_topic, orjson.dumps(first), key=b"s-metrics")
        # the same status again at once: inside the suppression window, no call
        again = typing_event("s-metrics", timeout_ms=60_000)
        await producer.send_and_wait(typing.input_topic, orjson.dumps(again), key=b"s-metrics")
        missing = typing_event("s-missing", timeout_ms=60_000)
        await producer.send_and_wait(typing.input_topic, orjson.dumps(missing), key=b"s-missing")
        await producer.send_and_wait(typing.input_topic, b"{broken", key=b"s-broken")

    found: Samples = {}

    async def scraped() -> bool:
        answer = await endpoint.get("/metrics")
        assert answer.status_code == 200
        found.update(samples(answer.text))
        return (
            value(found, "typing_events_total", decision="applied") == 1
            and value(found, "typing_events_total", decision="session_not_found") == 1
            and value(found, "typing_events_total", decision="dead_letter") == 1
        )

    await eventually(scraped, 20, "decisions counted on /metrics", 0.2)
    assert value(found, "typing_events_total", decision="suppressed") == 1
    assert value(found, "typing_events_total") == 4
    assert value(found, "typing_records_produced_total", kind="crm") == 1
    assert value(found, "typing_records_produced_total", kind="dlq") == 1
    # Genesys calls by method and status: the one applied PATCH, the 404 of the unknown one
    assert value(found, "genesys_calls_total", method="PATCH", status="200") == 1
    assert value(found, "genesys_calls_total", method="GET", status="404") >= 1
    assert value(found, "genesys_calls_total", operation="token", status="200") >= 1
    assert value(found, "genesys_call_duration_seconds_count") == value(
        found, "genesys_calls_total"
    )
    assert value(found, "typing_end_to_end_duration_seconds_count", decision="applied") == 1
    # three calls against a burst of two: at least one waited for budget
    assert value(found, "genesys_ratelimit_wait_seconds_count") >= 1
    assert value(found, "genesys_ratelimit_wait_seconds_sum") > 0.5
    # gauges read from the running objects
    assert value(found, "typing_sessions_tracked") == 1  # the unknown session is forgotten
    assert value(found, "typing_reconciliations_in_flight") == 0
    assert value(found, "genesys_circuit_breaker_state", state="closed") == 1
    assert value(found, "genesys_circuit_breaker_state", state="open") == 0
    assert value(found, "typing_ready") == 1
    lags = [v for (n, _), v in found.items() if n == "typing_consumer_lag"]
    assert lags, "no lag gauge"
    assert all(v >= 0 for v in lags)
    assert value(found, "typing_consumer_lag") == 0


class HeldRestore(TypingProcessor):
    """Restores only when the test lets it (a long changelog, made deterministic)."""

    gate: asyncio.Event

    async def _restore(self, partition: int) -> PartitionStore:
        await self.gate.wait()
        return await super()._restore(partition)


async def test_readyz_is_503_while_restoring_and_200_after(
    bootstrap_servers: str,
    emulator: EmulatorHandle,
    telemetry: Telemetry,
    endpoint: httpx.AsyncClient,
) -> None:
    """While a restore is held, `/readyz` names the partition and for how long it has
    been restoring; once it is done, the restore's duration and counts are on `/metrics`."""
    answer = await endpoint.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["reason"] == "processor not running"
    HeldRestore.gate = asyncio.Event()
    stack = await start(make_settings(bootstrap_servers, emulator), telemetry, HeldRestore)
    try:
        await eventually(
            lambda: stack.processor.assigned and stack.processor.restoring > 0,
            60,
            "partitions assigned and restoring",
        )
        answer = await endpoint.get("/readyz")
        assert answer.status_code == 503
        reason = answer.json()["reason"]
        assert re.fullmatch(
            r"partitions still restoring: 0 for \d+\.\d s \(\d+ records read.*\)", reason
        )
        held = samples((await endpoint.get("/metrics")).text)
        assert value(held, "typing_restore_elapsed_seconds", partition="0") > 0
        assert value(held, "typing_restore_duration_seconds_count") == 0
        health = await endpoint.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"

        HeldRestore.gate.set()

        async def ready() -> bool:
            return (await endpoint.get("/readyz")).status_code == 200

        await eventually(ready, 30, "/readyz 200 after the restore")
        assert stack.processor.ready
        done = samples((await endpoint.get("/metrics")).text)
        assert value(done, "typing_restore_duration_seconds_count", partition="0") == 1
        assert value(done, "typing_restore_duration_seconds_sum", partition="0") > 0
        for counted in ("typing_restore_records_total", "typing_restore_sessions_total"):
            assert any(n == counted and ("partition", "0") in ls for n, ls in done), counted
        assert value(done, "typing_restore_elapsed_seconds") == 0  # none under way
    finally:
        HeldRestore.gate.set()
        await stack.close()
    answer = await endpoint.get("/readyz")
    assert answer.status_code == 503
