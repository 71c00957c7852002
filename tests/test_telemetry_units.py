"""Telemetry pieces on their own: propagation, logs, configuration from `OTEL_*`, OTLP export
to a real HTTP receiver, counters across restarts, and the probe endpoints."""

from __future__ import annotations

import asyncio
import base64
import errno
import io
import logging
import re
import secrets
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import certifi
import h2.config
import h2.connection
import httpx
import orjson
import pytest
import trustme
from opentelemetry.metrics import CallbackOptions
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, get_current_span, set_span_in_context, use_span
from pipeline import eventually
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from processor import asgi
from processor.asgi import serve_in_background
from processor.clock import SystemClock
from processor.domain import Indicator, Status
from processor.emulator.testing import EmulatorHandle
from processor.logs import (
    JsonFormatter,
    RepeatThrottle,
    configure_logging,
    redact,
    throttled,
)
from processor.runtime import command
from processor.runtime.command import ops_endpoint
from processor.runtime.partition import Counters
from processor.runtime.service import PartitionStats, RestoreStats
from processor.settings import load_otel
from processor.sink.client import GenesysSink
from processor.sink.config import SinkConfig
from processor.telemetry import OpsEndpoint, Telemetry
from processor.telemetry.propagation import extract, header, inject
from processor.telemetry.tracing import PartitionTracing

# --------------------------------------------------------------------------- propagation


def tracing_with(spans: InMemorySpanExporter) -> PartitionTracing:
    telemetry = Telemetry.from_environment({}, span_processors=[SimpleSpanProcessor(spans)])
    tracing = telemetry.partition_tracing("in", 3, {"crm": "crm-topic"})
    assert tracing is not None
    return tracing


def test_traceparent_in_headers_becomes_the_parent_and_travels_on() -> None:
    spans = InMemorySpanExporter()
    tracing = tracing_with(spans)
    trace, parent = secrets.token_hex(16), secrets.token_hex(8)
    headers = [("other", b"x"), ("TraceParent", f"00-{trace}-{parent}-01".encode())]
    span = tracing.start_event(headers, 7, time.time_ns(), {"typing.session_id": "s-1"})
    publish, out = tracing.start_publish("crm", span)
    publish.end()
    span.end()
    sent, process = sorted(spans.get_finished_spans(), key=lambda s: s.name)
    assert process.name == "in process"
    assert process.context is not None
    assert format(process.context.trace_id, "032x") == trace
    assert process.parent is not None
    assert format(process.parent.span_id, "016x") == parent
    assert (process.attributes or {})["messaging.kafka.offset"] == 7
    assert (process.attributes or {})["typing.session_id"] == "s-1"
    assert sent.name == "crm-topic publish"
    assert sent.parent is not None
    assert sent.parent.span_id == process.context.span_id
    # the outbound header names the publish span, in the same trace
    traceparent = header(out, "traceparent")
    assert traceparent is not None
    assert traceparent.split("-")[1] == trace
    assert sent.context is not None
    assert traceparent.split("-")[2] == format(sent.context.span_id, "016x")
    assert tracing.trace_id(span) == trace
    own = header(tracing.headers(span), "traceparent")
    assert own == f"00-{trace}-{format(process.context.span_id, '016x')}-01"


@pytest.mark.parametrize(
    "headers",
    [
        None,
        [],
        [("traceparent", b"garbage")],
        [("traceparent", b"00-" + b"0" * 32 + b"-" + b"1" * 16 + b"-01")],  # all-zero trace id
    ],
)
def test_no_or_bad_traceparent_starts_a_new_trace(headers: list[tuple[str, bytes]] | None) -> None:
    spans = InMemorySpanExporter()
    span = tracing_with(spans).start_event(headers, 0, time.time_ns(), {})
    span.end()
    (finished,) = spans.get_finished_spans()
    assert finished.parent is None
    assert finished.context is not None
    assert finished.context.trace_id != 0


def test_inject_then_extract_round_trips() -> None:
    span = TracerProvider().get_tracer("t").start_span("s")
    headers = inject(set_span_in_context(span))
    assert [name for name, _ in headers] == ["traceparent"]
    context = extract(headers)
    assert context is not None
    remote = get_current_span(context).get_span_context()
    assert remote.trace_id == span.get_span_context().trace_id
    assert remote.span_id == span.get_span_context().span_id
    assert remote.is_remote


# --------------------------------------------------------------------------- logs


def log_line(logger: logging.Logger, formatter: JsonFormatter, message: str, *args: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    try:
        logger.warning(message, *args)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_json_log_lines_carry_the_current_trace() -> None:
    logger = logging.getLogger("test.telemetry.logs")
    formatter = JsonFormatter()
    plain = orjson.loads(log_line(logger, formatter, "no span"))
    assert "trace_id" not in plain
    span = TracerProvider().get_tracer("t").start_span("s")
    with use_span(span, end_on_exit=True):
        text = log_line(logger, formatter, "in a span\nsecond line")
    assert text.count("\n") == 1  # one object per line, newlines escaped
    entry = orjson.loads(text)
    context = span.get_span_context()
    assert entry["trace_id"] == format(context.trace_id, "032x")
    assert entry["span_id"] == format(context.span_id, "016x")
    assert entry["level"] == "WARNING"
    assert entry["message"] == "in a span\nsecond line"


def test_secrets_never_reach_a_log_line() -> None:
    logger = logging.getLogger("test.telemetry.secrets")
    text = log_line(
        logger,
        JsonFormatter(),
        "sent %s with %s",
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        "grant_type=client_credentials&client_secret=hunter2-very-secret",
    )
    assert "eyJhbGciOiJIUzI1NiJ9" not in text
    assert "hunter2" not in text
    assert "[REDACTED]" in text
    assert "grant_type=client_credentials" in text
    assert redact('{"password": "p4ss"}') == '{"password": "[REDACTED]"}'
    assert redact("session s-1 applied") == "session s-1 applied"


def test_credentials_in_reprs_quoted_or_under_any_scheme_are_masked() -> None:
    """A dict or keyword argument shown by `repr` quotes with `'`; a quoted secret may hold
    spaces; an `Authorization` header may use a scheme other than Bearer or Basic."""
    cases = {
        "options {'sasl_plain_password': 'hunter2', 'client_id': 'c'}": (
            "options {'sasl_plain_password': '[REDACTED]', 'client_id': 'c'}"
        ),
        "AIOKafkaProducer(sasl_plain_password='hunter2')": (
            "AIOKafkaProducer(sasl_plain_password='[REDACTED]')"
        ),
        "headers {'x-api-key': 'k-hunter2', 'accept': '*/*'}": (
            "headers {'x-api-key': '[REDACTED]', 'accept': '*/*'}"
        ),
        '{"client_secret": "hunter2 with spaces", "scope": "a"}': (
            '{"client_secret": "[REDACTED]", "scope": "a"}'
        ),
        "Authorization: Token hunter2": "Authorization: [REDACTED]",
        "{'Authorization': 'SharedKey acct:hunter2'}": "{'Authorization': '[REDACTED]'}",
    }
    for text, masked in cases.items():
        assert redact(text) == masked, text


def test_urls_lose_their_credentials_in_log_lines() -> None:
    """A CRM webhook or collector URL may carry a credential in its userinfo or its query."""
    cases = {
        'POST https://crm:crm-pass-1@crm.example/hook?token=abc123&sig=ff0 "200 OK"': (
            'POST https://crm:[REDACTED]@crm.example/hook?token=[REDACTED]&sig=[REDACTED] "200 OK"'
        ),
        "https://u:p@ss@host/x": "https://u:[REDACTED]@host/x",  # the last `@` ends it
        "cloning https://ghp_abc123@github.com/o/r": "cloning https://[REDACTED]@github.com/o/r",
        "http://h/?X-Amz-Signature=ab&X-Amz-Credential=AK&page=2&apiKey=k1&Access_Token=t&code=c": (
            "http://h/?X-Amz-Signature=[REDACTED]&X-Amz-Credential=[REDACTED]&page=2"
            "&apiKey=[REDACTED]&Access_Token=[REDACTED]&code=[REDACTED]"
        ),
        "http://h/cb#access_token=t1&state=s": "http://h/cb#access_token=[REDACTED]&state=s",
        # nothing to hide: hosts, ports, paths, plain parameters, prose and mail addresses stay
        "exporting traces to http://127.0.0.1:4318/v1/traces?tenant=a": (
            "exporting traces to http://127.0.0.1:4318/v1/traces?tenant=a"
        ),
        "status code=404 from ops@example.com": "status code=404 from ops@example.com",
    }
    for text, masked in cases.items():
        assert redact(text) == masked, text


@pytest.fixture
def process_logging() -> Iterator[None]:
    """Puts back what `configure_logging` changes on the process-wide loggers."""
    names = ("", "aiokafka", "httpx", "httpcore", "hpack", "h2")
    names += ("uvicorn", "uvicorn.error", "uvicorn.access")
    saved = [
        (logger, logger.level, list(logger.handlers), logger.propagate)
        for logger in map(logging.getLogger, names)
    ]
    yield
    for logger, level, handlers, propagate in saved:
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate


@pytest.mark.usefixtures("process_logging")
async def test_http_clients_log_no_urls_or_header_blocks_at_any_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """httpx logs each full URL at INFO; at DEBUG hpack/h2 dump header blocks, Huffman-coded
    (no redaction sees the OAuth `Authorization: Basic` in them)."""
    configure_logging("DEBUG")
    logging.getLogger("processor.test").debug("own debug line")

    async def hook(request: Request) -> Response:
        return Response(status_code=204)

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    async with (
        serve_in_background(app, port=0, name="crm") as listening,
        httpx.AsyncClient() as client,
    ):
        # a real connection: httpcore logs each step of it at DEBUG
        url = f"http://crm:crm-pass-1@127.0.0.1:{listening.port}/hook?token=abc123"
        assert (await client.post(url, content=b"{}")).status_code == 204
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    basic = base64.b64encode(b"client-id:client-secret-1").decode()
    request = [(":method", "POST"), (":scheme", "https"), (":authority", "login.example.com")]
    request += [(":path", "/oauth/token"), ("authorization", f"Basic {basic}")]
    connection.send_headers(1, request)
    entries = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [e["message"] for e in entries if e["logger"] == "processor.test"] == ["own debug line"]
    quiet = ("httpx", "httpcore", "hpack", "h2")
    assert [e for e in entries if e["logger"].split(".")[0] in quiet] == []


async def test_a_client_span_never_records_a_credential_of_the_url() -> None:
    """`url.full` keeps no userinfo (OpenTelemetry's HTTP conventions: REDACTED)."""
    secret = secrets.token_hex(8)
    spans = InMemorySpanExporter()
    telemetry = Telemetry.from_environment({}, span_processors=[SimpleSpanProcessor(spans)])

    async def session(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    app = Starlette(routes=[Route("/api/v2/webchat/sessions/{id}", session)])
    try:
        async with serve_in_background(app, port=0, name="genesys") as listening:
            host = f"127.0.0.1:{listening.port}"
            sink = GenesysSink(
                SinkConfig(
                    api_url=f"http://{host}",
                    login_url=f"http://{host}",
                    client_id="client",
                    client_secret=SecretStr("client-secret"),
                )
            )
            telemetry.instrument_sink(sink)
            answer = await sink.http.get(
                f"http://proxy:{secret}@{host}/api/v2/webchat/sessions/s-1"
            )
            assert answer.status_code == 200
            await sink.aclose()
        (span,) = spans.get_finished_spans()
        assert span.attributes is not None
        assert span.attributes["url.full"] == (
            f"http://REDACTED:REDACTED@{host}/api/v2/webchat/sessions/s-1"
        )
        assert secret not in str(span.attributes)
    finally:
        telemetry.shutdown()


async def test_genesys_calls_are_counted_by_their_operation(emulator: EmulatorHandle) -> None:
    """`session`: the webchat session's GET and PATCH; `typing`: both messaging typing
    calls (DESIGN §2b); `token`: the login. Counted as the service answered them."""
    conversation, communication, integration = (
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        "16fd2706-8baf-433b-82eb-8c7fada847da",
    )
    emulator.create_session("s-1")
    emulator.create_conversation(conversation, [communication])
    emulator.create_integration(integration)
    now = SystemClock().now_ms()
    shown = Indicator(Status.TYPING, originated_at=now, expires_at=now + 30_000, version=1)
    telemetry = Telemetry.from_environment({})
    try:
        config = SinkConfig(
            api_url=emulator.base_url,
            login_url=emulator.base_url,
            client_id=emulator.client_id,
            client_secret=SecretStr(emulator.client_secret),
        )
        async with GenesysSink(config) as sink:
            telemetry.instrument_sink(sink)
            assert (await sink.apply("s-1", shown)).ok
            assert (await sink.agent_typing(conversation, communication, 4000)).ok
            typing = await sink.open_messaging_typing(integration, "c-1", "Email", None, 4000)
            assert typing.ok
        # the service's own count of what it answered, each route's operation by DESIGN §2b
        messages = "POST /api/v2/conversations/messages"
        operations = {
            "POST /oauth/token": "token",
            "GET /api/v2/webchat/sessions/{sessionId}": "session",
            "PATCH /api/v2/webchat/sessions/{sessionId}": "session",
            f"{messages}/{{conversationId}}/communications/{{communicationId}}/typing": "typing",
            f"{messages}/{{integrationId}}/inbound/open/event": "typing",
        }
        answered: Counter[tuple[str, str | int, str]] = Counter()
        for route, statuses in emulator.stats()["by_route"].items():
            for status, count in statuses.items():
                answered[(route.split(" ")[0], int(status), operations[route])] += count
        assert sum(answered.values()) == 5  # the login, a GET, a PATCH and both typing calls
        assert telemetry.genesys_calls == answered
    finally:
        telemetry.shutdown()


# --------------------------------------------------------------------------- configuration


def test_otel_sdk_disabled_turns_everything_off() -> None:
    telemetry = Telemetry.from_environment({"OTEL_SDK_DISABLED": "true"})
    assert not telemetry.enabled
    assert telemetry.partition_tracing("in", 0, {}) is None
    assert telemetry.render_prometheus() == b""
    assert not Telemetry.disabled().enabled


@pytest.mark.parametrize(
    ("value", "off"), [("TRUE", True), ("on", True), ("t", True), ("0", False), ("no", False)]
)
def test_otel_sdk_disabled_reads_as_the_start_up_check_reads_it(
    value: str, off: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`load_otel` accepts the value; telemetry must then do what it says."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", value)
    assert load_otel().sdk_disabled is off
    assert Telemetry.from_environment({"OTEL_SDK_DISABLED": value}).enabled is not off


@pytest.mark.parametrize("value", ["", "always_off"])
def test_an_exemplar_filter_the_start_up_check_accepts_makes_telemetry(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Empty is unset (the start-up check's reading, and OpenTelemetry's): the SDK
    alone would refuse it with a traceback."""
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", value)
    load_otel()
    telemetry = Telemetry.from_environment({})
    try:
        assert telemetry.enabled
    finally:
        telemetry.shutdown()


def span_limited_by(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ReadableSpan:
    """A span given 200 attributes, events and links of 200 characters, as `env`'s limits let
    it keep them (checked first as start-up checks them)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    load_otel()
    spans = InMemorySpanExporter()
    telemetry = Telemetry.from_environment({}, span_processors=[SimpleSpanProcessor(spans)])
    assert telemetry.tracer_provider is not None
    tracer = telemetry.tracer_provider.get_tracer("limits")
    linked = tracer.start_span("linked").get_span_context()
    many = {f"key{i}": "v" * 200 for i in range(200)}
    span = tracer.start_span("limited", attributes=many, links=[Link(linked, many)] * 200)
    for i in range(200):
        span.add_event(f"event{i}", many)
    span.end()
    telemetry.shutdown()
    return spans.get_finished_spans()[-1]


@pytest.mark.parametrize(
    "name",
    [
        "OTEL_ATTRIBUTE_COUNT_LIMIT",
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
        "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "OTEL_SPAN_EVENT_COUNT_LIMIT",
        "OTEL_SPAN_LINK_COUNT_LIMIT",
        "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
        "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
    ],
)
def test_an_empty_span_limit_is_its_default_not_no_limit(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Empty is unset (the start-up check's reading, and OpenTelemetry's): the SDK alone
    would take it as no limit, and keep every attribute, event and link of a span."""
    span = span_limited_by({name: ""}, monkeypatch)
    assert len(span.attributes or {}) == 128
    assert len(span.events) == 128
    assert len(span.links) == 128
    assert {len(event.attributes or {}) for event in span.events} == {128}
    assert {len(link.attributes or {}) for link in span.links} == {128}
    assert {len(str(value)) for value in (span.attributes or {}).values()} == {200}


def test_an_empty_span_limit_falls_back_to_the_global_one(monkeypatch: pytest.MonkeyPatch) -> None:
    span = span_limited_by(
        {
            "OTEL_ATTRIBUTE_COUNT_LIMIT": "5",
            "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "7",
            "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "",
            "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "",
            "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT": "",
            "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT": "3",
            "OTEL_SPAN_EVENT_COUNT_LIMIT": "9",
        },
        monkeypatch,
    )
    assert len(span.attributes or {}) == 5
    assert {len(str(value)) for value in (span.attributes or {}).values()} == {7}
    assert len(span.events) == 9
    assert {len(event.attributes or {}) for event in span.events} == {5}
    assert {len(link.attributes or {}) for link in span.links} == {3}
    assert len(span.links) == 128


@dataclass
class Received:
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)
    tenants: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)


@pytest.fixture
async def collector() -> AsyncIterator[tuple[str, Received]]:
    """A real HTTP endpoint that accepts OTLP/HTTP posts and keeps them."""
    received = Received()

    async def accept(request: Request) -> Response:
        body = await request.body()
        received.requests.append((request.url.path, request.headers["content-type"], body))
        received.tenants.append(request.headers.get("x-tenant", ""))
        received.queries.append(request.url.query)
        return Response(b"", media_type="application/x-protobuf")

    app = Starlette(routes=[Route("/v1/{signal}", accept, methods=["POST"])])
    async with serve_in_background(app, port=0, name="collector") as listening:
        yield listening.base_url, received


async def test_otlp_export_follows_the_standard_environment(
    collector: tuple[str, Received], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, received = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "typing-under-test")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
    telemetry = Telemetry.from_environment()
    try:
        assert telemetry.tracer_provider is not None
        telemetry.tracer_provider.get_tracer("t").start_span("exported").end()
        # the exporters post from their own threads to the server on this loop
        await asyncio.to_thread(telemetry.force_flush, 10)
        paths = {path for path, _, _ in received.requests}
        assert paths == {"/v1/traces", "/v1/metrics"}
        assert {ctype for _, ctype, _ in received.requests} == {"application/x-protobuf"}
        assert set(received.tenants) == {"acme"}  # OTEL_EXPORTER_OTLP_HEADERS
        traces = ExportTraceServiceRequest()
        traces.ParseFromString(next(b for p, _, b in received.requests if p == "/v1/traces"))
        (resource_spans,) = traces.resource_spans
        attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
        assert attributes["service.name"] == "typing-under-test"
        names = [s.name for scope in resource_spans.scope_spans for s in scope.spans]
        assert names == ["exported"]
        metrics = ExportMetricsServiceRequest()
        metrics.ParseFromString(next(b for p, _, b in received.requests if p == "/v1/metrics"))
        exported = {
            m.name for rm in metrics.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        }
        assert "typing.ready" in exported
    finally:
        await asyncio.to_thread(telemetry.shutdown)


async def test_which_signals_are_exported_follows_the_environment(
    collector: tuple[str, Received],
) -> None:
    url, _ = collector
    cases = [
        ({}, {}),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": f"{url}/"},
            {"traces": f"{url}/v1/traces", "metrics": f"{url}/v1/metrics"},
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://192.0.2.1:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{url}/v1/traces",
                "OTEL_METRICS_EXPORTER": "none",
            },
            {"traces": f"{url}/v1/traces"},
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": url,
                "OTEL_TRACES_EXPORTER": "none",
                "OTEL_METRICS_EXPORTER": "none",
            },
            {},
        ),
    ]
    for env, expected in cases:
        telemetry = Telemetry.from_environment(env)
        assert telemetry.otlp_endpoints == expected
        await asyncio.to_thread(telemetry.shutdown)  # exports to the collector on this loop


async def test_a_query_in_the_base_endpoint_stays_after_the_signal_path(
    collector: tuple[str, Received],
) -> None:
    """OTLP appends `v1/<signal>` to the base URL's path: a query (a gateway's tenant or key)
    stays the query, where at the end of the text it would swallow the path."""
    url, received = collector
    telemetry = Telemetry.from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": f"{url}/?tenant=acme"})
    try:
        assert telemetry.otlp_endpoints == {
            "traces": f"{url}/v1/traces?tenant=acme",
            "metrics": f"{url}/v1/metrics?tenant=acme",
        }
        assert telemetry.tracer_provider is not None
        telemetry.tracer_provider.get_tracer("t").start_span("exported").end()
        await asyncio.to_thread(telemetry.force_flush, 10)
        assert {path for path, _, _ in received.requests} == {"/v1/traces", "/v1/metrics"}
        assert set(received.queries) == {"tenant=acme"}
    finally:
        await asyncio.to_thread(telemetry.shutdown)


@pytest.mark.parametrize(
    ("listed", "over_otlp"),
    [
        ("otlp", True),
        ("prometheus", False),  # `/metrics` is served anyway: nothing more is asked for
        ("otlp,prometheus", True),
        ("prometheus, otlp", True),
        ("none", False),
        ("", True),  # empty is unset: the default, `otlp`
    ],
)
async def test_metrics_go_over_otlp_only_when_the_exporter_list_names_otlp(
    listed: str, over_otlp: bool, collector: tuple[str, Received], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = collector
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", listed)
    load_otel()  # the start-up check accepts the value; telemetry must then do what it says
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_METRICS_EXPORTER": listed}
    telemetry = Telemetry.from_environment(env)
    try:
        assert telemetry.otlp_endpoints.get("traces") == f"{url}/v1/traces"
        assert ("metrics" in telemetry.otlp_endpoints) is over_otlp
    finally:
        await asyncio.to_thread(telemetry.shutdown)


async def test_the_collector_url_is_logged_without_its_credential(
    collector: tuple[str, Received], caplog: pytest.LogCaptureFixture
) -> None:
    """Masked as `config` and the settings' repr mask it: the userinfo, and every query
    value (whatever its name, `k=` as well as `token=`)."""
    url, _ = collector
    with_credentials = url.replace("http://", "http://otel:otel-pass-1@") + "?k=otel-key-2"
    caplog.set_level(logging.INFO, logger="processor.telemetry.core")
    telemetry = Telemetry.from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": with_credentials})
    await asyncio.to_thread(telemetry.shutdown)
    exporting = [m for m in caplog.messages if m.startswith("exporting")]
    assert len(exporting) == 2
    for message in exporting:
        assert "otel-pass-1" not in message, message
        assert "otel-key-2" not in message, message
        assert "://**********@" in message, message
        assert message.endswith("?k=**********"), message


@pytest.fixture
async def tls_collector(tmp_path: Path) -> AsyncIterator[tuple[str, Path, Received]]:
    """An HTTPS OTLP receiver whose certificate a private CA signed: its URL, the CA's
    bundle, and what it received."""
    received = Received()

    async def accept(request: Request) -> Response:
        received.requests.append((request.url.path, "", await request.body()))
        return Response(b"", media_type="application/x-protobuf")

    authority = trustme.CA()
    server = tmp_path / "server.pem"
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server))
    ca_file = tmp_path / "collector-ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    app = Starlette(routes=[Route("/v1/{signal}", accept, methods=["POST"])])
    async with serve_in_background(
        app, port=0, name="TLS collector", ssl_certfile=str(server)
    ) as listening:
        yield f"https://127.0.0.1:{listening.port}", ca_file, received


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
async def test_the_otlp_certificate_wins_over_a_ca_bundle_of_the_environment(
    variable: str,
    tls_collector: tuple[str, Path, Received],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Images often set `REQUESTS_CA_BUNDLE` or `CURL_CA_BUNDLE` for the system's CAs: the
    exporter's HTTP library took it over `OTEL_EXPORTER_OTLP_CERTIFICATE`, and every
    export to a collector with a private CA failed its TLS handshake."""
    url, ca_file, received = tls_collector
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv(variable, certifi.where())  # public CAs, not the collector's
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(ca_file))
    load_otel()
    telemetry = Telemetry.from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": url})
    try:
        assert telemetry.tracer_provider is not None
        telemetry.tracer_provider.get_tracer("t").start_span("exported").end()
        await asyncio.to_thread(telemetry.force_flush, 10)
        assert {path for path, _, _ in received.requests} == {"/v1/traces", "/v1/metrics"}
    finally:
        await asyncio.to_thread(telemetry.shutdown)


async def test_a_ca_bundle_of_the_environment_still_serves_where_no_otlp_certificate_is_set(
    tls_collector: tuple[str, Path, Received], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca_file, received = tls_collector
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
    telemetry = Telemetry.from_environment(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_METRICS_EXPORTER": "none"}
    )
    try:
        assert telemetry.tracer_provider is not None
        telemetry.tracer_provider.get_tracer("t").start_span("exported").end()
        await asyncio.to_thread(telemetry.force_flush, 10)
        assert [path for path, _, _ in received.requests] == ["/v1/traces"]
    finally:
        await asyncio.to_thread(telemetry.shutdown)


async def test_shutdown_does_not_wait_out_a_collector_that_never_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The exporters would each wait their whole timeout (10 s); SIGTERM has 10 s in all.
    Shutdown returns at its own bound, leaving the exports in flight to daemon threads."""
    release = asyncio.Event()
    held: list[str] = []

    async def hold(request: Request) -> Response:
        held.append(request.url.path)
        await release.wait()
        return Response(b"", media_type="application/x-protobuf")

    app = Starlette(routes=[Route("/v1/{signal}", hold, methods=["POST"])])
    before = set(threading.enumerate())
    async with serve_in_background(app, port=0, name="stalled collector") as listening:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": listening.base_url,
            # longer than any stall of the machine: an export ends only when released
            "OTEL_EXPORTER_OTLP_TIMEOUT": "60000",
        }
        telemetry = Telemetry.from_environment(env)
        assert telemetry.tracer_provider is not None
        telemetry.tracer_provider.get_tracer("t").start_span("held").end()
        await asyncio.to_thread(telemetry.shutdown, 0.5)
        new = set(threading.enumerate()) - before
        exporting = [t for t in new if t.name == "telemetry-shutdown" and t.is_alive()]
        # both last exports did go out, and were still held when shutdown returned
        await eventually(lambda: sorted(held) == ["/v1/metrics", "/v1/traces"], 10, "exports")
        release.set()  # the abandoned exports complete and their threads end
        for thread in exporting:
            await asyncio.to_thread(thread.join, 10)
    # The traces export holds its shutdown thread; the metrics reader's shutdown gives up
    # at the same bound, leaving its export to the reader's own thread, so its shutdown
    # thread may have ended by then. What is left running must not hold the exit.
    assert exporting, "shutdown waited out the held exports"
    assert all(thread.daemon for thread in exporting)
    assert not any(thread.is_alive() for thread in exporting)
    assert "telemetry export unfinished after 0.5 s" in caplog.text


async def test_an_endless_answer_from_the_collector_is_read_only_so_far() -> None:
    """An OTLP endpoint that answers with a body that never ends (a misrouted endpoint, a
    proxy's stream): the exporter read it whole into memory, some 250 MB a second, and
    the export never ended, until the processor was killed for its memory."""
    sent = 0
    closed = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        try:
            while True:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        except ConnectionError:
            closed.set()
        finally:
            writer.close()

    server = await asyncio.start_server(endless, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_METRICS_EXPORTER": "none",
    }
    telemetry = Telemetry.from_environment(env)
    try:
        assert telemetry.tracer_provider is not None
        telemetry.tracer_provider.get_tracer("t").start_span("exported").end()
        flushing = asyncio.ensure_future(asyncio.to_thread(telemetry.force_flush, 5.0))
        await asyncio.wait_for(closed.wait(), 5)  # the exporter hung up
        await flushing
        assert sent < 16 * 2**20  # what the sockets' buffers took, not the stream
    finally:
        await asyncio.to_thread(telemetry.shutdown, 0.5)
        server.close()


def test_repeats_of_the_sdk_are_counted_on_the_next_line_let_through() -> None:
    now = [0.0]
    throttle = RepeatThrottle(60.0, clock=lambda: now[0])

    def passes(name: str, template: str, *args: object) -> str | None:
        record = logging.LogRecord(name, logging.WARNING, __file__, 1, template, args, None)
        return record.getMessage() if throttle.filter(record) else None

    exporter = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
    assert passes(exporter, "retrying in %.2fs", 1.0) == "retrying in 1.00s"
    assert passes(exporter, "retrying in %.2fs", 2.0) is None  # the template repeats
    assert passes(exporter, "Failed to export %s", "spans") == "Failed to export spans"
    assert passes("processor.sink", "retrying in %.2fs", 2.0) == "retrying in 2.00s"  # ours
    now[0] = 59.9
    assert passes(exporter, "retrying in %.2fs", 4.0) is None
    now[0] = 60.0
    assert passes(exporter, "retrying in %.2fs", 8.0) == (
        "retrying in 8.00s (2 more like it in 60 s not logged)"
    )
    for n in range(1000):  # messages formatted before they are logged: few are kept
        assert passes(exporter, f"collector {n} refused") == f"collector {n} refused"
    assert len(throttle._seen) <= 256


def test_our_lines_logged_throttled_repeat_by_their_key_not_their_template() -> None:
    now = [0.0]
    throttle = RepeatThrottle(60.0, clock=lambda: now[0])

    def passes(key: tuple[object, ...] | None, offset: int) -> bool:
        record = logging.getLogger("processor.runtime.partition").makeRecord(
            "processor.runtime.partition",
            logging.WARNING,
            __file__,
            1,
            "dead letter at %s",
            (offset,),
            None,
            extra=None if key is None else throttled(*key),
        )
        return throttle.filter(record)

    assert passes(("in", 0, "invalid_json"), 1)
    assert not passes(("in", 0, "invalid_json"), 2)
    assert passes(("in", 1, "invalid_json"), 3)  # another partition
    assert passes(("in", 0, "invalid_event"), 4)  # another reason
    assert passes(None, 5)  # not throttled
    assert passes(None, 6)


@pytest.mark.usefixtures("process_logging")
async def test_a_collector_that_is_down_is_logged_once_not_at_every_export(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The exporters log every failed export (a collector down fails one every few seconds
    for as long as it is down, the SDK's retries a line each): a line for each kind of
    failure, then its repeats counted on the next one let through."""
    configure_logging("INFO")
    with socket.socket() as refusing:  # bound, never listening: connections are refused
        refusing.bind(("127.0.0.1", 0))
        port = refusing.getsockname()[1]
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "300",  # no time for the SDK's 1 s backoff
            "OTEL_METRICS_EXPORTER": "none",
        }
        telemetry = Telemetry.from_environment(env)
        try:
            assert telemetry.tracer_provider is not None
            for _ in range(8):
                telemetry.tracer_provider.get_tracer("t").start_span("lost").end()
                await asyncio.to_thread(telemetry.force_flush, 5.0)
        finally:
            await asyncio.to_thread(telemetry.shutdown, 0.5)
    entries = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    failures = [e for e in entries if e["logger"].startswith("opentelemetry.exporter")]
    assert len(failures) == 1, failures
    assert failures[0]["message"].startswith("Failed to export spans batch")


async def test_the_endpoint_stops_while_the_last_export_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGTERM to exit is 10 s, 6.5 of them for draining. A `/readyz` in flight (asking a
    cluster that does not answer) holds the endpoint's stop for its grace (2 s), and a
    collector that never answers holds the last export for its bound (3 s): one after the
    other, the 5 s took the exit past 10 s."""
    release = asyncio.Event()
    asked = asyncio.Event()
    stopping = False
    exported = asyncio.Event()  # the last export reached the collector

    async def hold(request: Request) -> Response:
        if stopping:
            exported.set()
        await release.wait()
        return Response(b"", media_type="application/x-protobuf")

    async def readiness() -> str | None:
        asked.set()
        # the cluster answers once the last export is out: within the endpoint's stop only
        # when the export runs beside it (after it, the grace is up and the probe cut off)
        await exported.wait()
        return None

    app = Starlette(routes=[Route("/v1/{signal}", hold, methods=["POST"])])
    async with (
        serve_in_background(app, port=0, name="stalled collector") as listening,
        httpx.AsyncClient(timeout=30) as client,
    ):
        telemetry = Telemetry.from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": listening.base_url})
        try:
            async with command.observability(
                telemetry, 0, "127.0.0.1", readiness=readiness
            ) as port:
                probe = asyncio.ensure_future(client.get(f"http://127.0.0.1:{port}/readyz"))
                await asyncio.wait_for(asked.wait(), 10)
                stopping = True
        finally:
            release.set()
        answer = await probe
    assert answer.status_code == 200, answer.text  # not the 503 of a probe cut off
    assert "telemetry export unfinished after 3.0 s" in caplog.text  # made, not waited for


async def test_the_otlp_timeout_is_read_in_milliseconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`OTEL_EXPORTER_OTLP_TIMEOUT=300` is 300 ms, as the specification says (the SDK alone
    would read 300 s): an export to a collector that never answers gives up after it."""
    release = asyncio.Event()

    async def hold(request: Request) -> Response:
        await release.wait()
        return Response(b"", media_type="application/x-protobuf")

    app = Starlette(routes=[Route("/v1/{signal}", hold, methods=["POST"])])
    async with serve_in_background(app, port=0, name="stalled collector") as listening:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": listening.base_url,
            "OTEL_EXPORTER_OTLP_TIMEOUT": "300",
            "OTEL_METRICS_EXPORTER": "none",
        }
        telemetry = Telemetry.from_environment(env)
        assert telemetry.tracer_provider is not None
        telemetry.tracer_provider.get_tracer("t").start_span("held").end()
        # the SDK's flush waits for the export whatever its own timeout says
        flush = asyncio.ensure_future(asyncio.to_thread(telemetry.force_flush))
        try:
            # a deadline, not a measure: the export given up, the flush ends well within
            # it; the SDK's default timeout (10 s) would hold the export past it
            done, _ = await asyncio.wait([flush], timeout=8.0)
        finally:
            release.set()
            await flush
            await asyncio.to_thread(telemetry.shutdown)
    assert done, "the export was still waiting for the collector"
    assert "Failed to export spans batch" in caplog.text  # given up, not answered


# --------------------------------------------------------------------------- counters, probes


@dataclass
class FakeProcessor:
    counters: Counters = field(default_factory=Counters)
    ready: bool = True
    reachable: bool = True
    problem: str | None = None
    restoring: list[RestoreStats] = field(default_factory=list)
    waiting: str | None = None

    def partition_stats(self) -> list[PartitionStats]:
        return [PartitionStats(0, 5, 1, 2, 3), PartitionStats(1, 0, 0, 0, None)]

    def restores(self) -> list[RestoreStats]:
        return self.restoring

    def unassigned(self) -> str | None:
        return self.waiting

    async def broker_reachable(self) -> bool:
        return self.reachable


def metric_lines(telemetry: Telemetry, prefix: str) -> list[str]:
    text = telemetry.render_prometheus().decode()
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_counters_survive_a_processor_restart_and_gauges_read_partitions() -> None:
    telemetry = Telemetry.from_environment({})
    first = FakeProcessor()
    telemetry.observe(first)
    first.counters.decisions.update({"applied": 3, "suppressed": 2})
    first.counters.dead_letters = 1
    telemetry.forget(first)
    second = FakeProcessor()
    telemetry.observe(second)
    second.counters.decisions.update({"applied": 1})
    lines = metric_lines(telemetry, "typing_events_total")
    assert any('decision="applied"' in line and line.endswith(" 4.0") for line in lines), lines
    assert any('decision="dead_letter"' in line and line.endswith(" 1.0") for line in lines)
    tracked = metric_lines(telemetry, "typing_sessions_tracked{")
    assert len(tracked) == 2
    lag = metric_lines(telemetry, "typing_consumer_lag{")
    assert len(lag) == 1  # partition 1 has no known lag yet: no sample rather than a guess
    assert 'partition="0"' in lag[0]
    assert lag[0].endswith(" 3.0")
    telemetry.shutdown()


def test_counters_are_read_on_the_exporters_thread_while_the_loop_adds_to_them() -> None:
    """The exporter collects on its own thread: a decision counted for the first time
    meanwhile must not fail the collection ("dictionary changed size")."""
    telemetry = Telemetry.from_environment({})
    retired = FakeProcessor()
    telemetry.observe(retired)
    retired.counters.decisions["applied"] += 1
    telemetry.forget(retired)  # (totals start from the retired counts)
    live = FakeProcessor()
    telemetry.observe(live)
    failures: list[BaseException] = []
    done = threading.Event()

    def collect() -> None:
        while not done.is_set():
            try:
                telemetry._observe_decisions(CallbackOptions())
            except RuntimeError as exc:
                failures.append(exc)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as can be
    collector = threading.Thread(target=collect)
    collector.start()
    try:
        for n in range(30_000):
            live.counters.decisions[f"kind-{n}"] += 1
            if failures:
                break
    finally:
        done.set()
        collector.join()
        sys.setswitchinterval(interval)
        telemetry.shutdown()
    assert failures == []


@pytest.fixture
def ops() -> OpsEndpoint:
    return OpsEndpoint(Telemetry.disabled())


async def get(ops: OpsEndpoint, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=ops.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
        return await client.get(path)


async def test_readyz_names_what_is_missing(ops: OpsEndpoint) -> None:
    answer = await get(ops, "/readyz")
    assert (answer.status_code, answer.json()["reason"]) == (503, "processor not running")
    processor = FakeProcessor(ready=False)
    ops.telemetry.observe(processor)
    answer = await get(ops, "/readyz")
    assert (answer.status_code, answer.json()["reason"]) == (
        503,
        "partitions not assigned or still restoring",
    )
    processor.waiting = "no partitions assigned yet: group g rebalancing for 2.0 s"
    answer = await get(ops, "/readyz")
    assert (answer.status_code, answer.json()["reason"]) == (503, processor.waiting)
    processor.waiting = None
    processor.ready = True
    assert (await get(ops, "/readyz")).status_code == 200
    processor.reachable = False
    answer = await get(ops, "/readyz")
    assert (answer.status_code, answer.json()["reason"]) == (503, "Kafka cluster unreachable")
    processor.problem = "partition 2 stopped committing (nothing is skipped): KafkaError"
    answer = await get(ops, "/readyz")
    assert (answer.status_code, answer.json()["reason"]) == (503, processor.problem)
    ops.telemetry.forget(processor)
    ops.telemetry.last_failure = "partition 2 stopped committing"
    answer = await get(ops, "/readyz")
    assert answer.json()["reason"] == (
        "processor not running; restarting after: partition 2 stopped committing"
    )


async def test_readyz_serves_no_more_of_a_reason_than_a_probe_needs() -> None:
    """An exception's text is the reason a restart gives: one of megabytes (a broker's
    message, a repr of a whole batch) is cut, as is any reason a readiness gives."""
    huge = "x" * 10_000_000
    ops = OpsEndpoint(Telemetry.disabled())
    ops.telemetry.last_failure = huge
    answer = await get(ops, "/readyz")
    prefix = "processor not running; restarting after: "
    assert (answer.status_code, answer.json()["reason"]) == (503, prefix + "x" * 500)

    async def long_reason() -> str:
        return huge

    answer = await get(OpsEndpoint(Telemetry.disabled(), long_reason), "/readyz")
    assert (answer.status_code, answer.json()["reason"]) == (503, "x" * 2000)


async def test_readyz_names_the_partitions_restoring_and_how_far_they_are(
    ops: OpsEndpoint,
) -> None:
    """Each restore under way by partition, for how long and how far its read has come; a
    replica restoring many names the first ones and counts the rest."""
    processor = FakeProcessor(
        ready=False, restoring=[RestoreStats(3, 12.34, 1200, 300), RestoreStats(7, 0.5, 0, None)]
    )
    ops.telemetry.observe(processor)
    answer = await get(ops, "/readyz")
    assert (answer.status_code, answer.json()["reason"]) == (
        503,
        "partitions still restoring: 3 for 12.3 s (1200 records read, 300 offsets to go),"
        " 7 for 0.5 s (0 records read)",
    )
    processor.restoring = [RestoreStats(p, 1.0, 0, None) for p in range(20)]
    reason = (await get(ops, "/readyz")).json()["reason"]
    assert reason.count(" for 1.0 s") == 16
    assert reason.endswith("15 for 1.0 s (0 records read) and 4 more")


async def test_healthz_fails_when_the_event_loop_stalls(ops: OpsEndpoint) -> None:
    async with ops.monitoring():
        await eventually(lambda: ops.monitor.last_beat > 0, 5, "monitor ran")
        assert (await get(ops, "/healthz")).status_code == 200
        ops.monitor.last_beat -= 60  # as if the loop had not run the sampler for a minute
        answer = await get(ops, "/healthz")
        assert answer.status_code == 503
        assert answer.json()["status"] == "stalled"


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\nHost: ops\r\n"])
async def test_a_client_that_never_sends_its_request_whole_is_hung_up_on(
    sent: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint listens on every address of the pod: a connection that sends nothing,
    or a request head never finished (slowloris), held its socket for ever, and enough of
    them took every file descriptor the process has, the Kafka cluster's and Genesys's
    connections' too. Kubernetes' probes and Prometheus send theirs at once."""
    monkeypatch.setattr(asgi, "HEAD_TIMEOUT_S", 0.2, raising=False)
    async with ops_endpoint(Telemetry.disabled(), 0, "127.0.0.1") as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(sent)
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
            async with httpx.AsyncClient(timeout=5) as client:  # a whole request: served
                response = await client.get(f"http://127.0.0.1:{port}/healthz")
                assert response.status_code == 200
                assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        finally:
            writer.close()


async def test_a_readyz_in_flight_at_stop_answers_503_and_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A `/readyz` asking a cluster that does not answer while the process stops is
    cancelled after the stop's grace: expected at exit, so no ERROR "Exception in ASGI
    application" with its traceback; the probe gets a 503."""
    asked = asyncio.Event()

    async def cluster_silent() -> str | None:
        asked.set()
        await asyncio.Event().wait()  # the cluster never answers
        return None

    async with httpx.AsyncClient(timeout=30) as client:
        async with ops_endpoint(
            Telemetry.disabled(), 0, "127.0.0.1", readiness=cluster_silent
        ) as port:
            probe = asyncio.ensure_future(client.get(f"http://127.0.0.1:{port}/readyz"))
            await asyncio.wait_for(asked.wait(), 10)
        answer = await asyncio.wait_for(probe, 10)
    assert answer.status_code == 503
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in errors if "Exception in ASGI application" in r.getMessage()]


async def test_disabled_telemetry_serves_empty_metrics(ops: OpsEndpoint) -> None:
    answer = await get(ops, "/metrics")
    assert answer.status_code == 200
    assert answer.content == b""


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 on this machine")
async def test_the_ops_endpoint_answers_on_ipv6_as_on_ipv4() -> None:
    """In an IPv6-only cluster the kubelet probes the pod's IPv6 address: an endpoint on
    IPv4 alone fails every probe, and liveness restarts the pod for ever."""
    async with ops_endpoint(Telemetry.disabled(), 0) as port:
        for host in ("127.0.0.1", "[::1]"):
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5) as client:
                assert (await client.get("/healthz")).status_code == 200, host


async def test_the_ops_endpoint_listens_on_ipv4_where_the_kernel_has_no_ipv6(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serve = command.serve_in_background

    def no_ipv6(app: Any, host: str, port: int, **options: Any) -> Any:
        if host == "::":
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return serve(app, host, port, **options)

    monkeypatch.setattr(command, "serve_in_background", no_ipv6)
    async with (
        ops_endpoint(Telemetry.disabled(), 0) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client,
    ):
        assert (await client.get("/healthz")).status_code == 200
