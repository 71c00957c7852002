"""Instrumenting a `GenesysSink` from the outside (the sink itself knows nothing of telemetry).

- every HTTP request of its client: a CLIENT span (HTTP semantic conventions), a count by
  method and status and a latency sample, from one thin transport wrapper (which also sees
  requests that fail without a status: `status="error"`). OpenTelemetry's httpx
  instrumentation would do the span too, at about twice the cost per request;
- breaker state, budget at hand and 429 pauses are read by gauges from the sink's public
  properties (see `Telemetry`).

Only span and metric attributes the request line holds are recorded: method, status, the
API operation and the host. Headers (the bearer token) and bodies (client credentials) never.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    from processor.sink.client import GenesysSink

    from .core import Telemetry

_AttributeKey = tuple[str, str | int, str]
REDACTED = "REDACTED"  # what OpenTelemetry's HTTP conventions put for URL credentials


def full_url(url: httpx.URL) -> str:
    """`url.full` as OpenTelemetry's HTTP conventions have it: no query (the sink sends
    none; a CRM webhook URL's may hold a token) and no fragment (never sent; OAuth's
    implicit grant leaves a token there), and userinfo, should a configured URL carry it,
    as `REDACTED:REDACTED`."""
    if url.query or url.fragment:
        url = url.copy_with(query=None, fragment=None)
    if url.userinfo:
        url = url.copy_with(username=REDACTED, password=REDACTED)
    return str(url)


def _operation(path: str) -> str:
    """`token`, `typing` (agent typing and an Open Messaging typing event, DESIGN §2b) or
    `session` (a webchat session's GET and PATCH)."""
    if path.endswith("/oauth/token"):
        return "token"
    if path.endswith(("/typing", "/inbound/open/event")):
        return "typing"
    return "session"


class _TracedTransport(httpx.AsyncBaseTransport):
    """A CLIENT span, a count and a latency sample for each request sent.

    The span is a child of the current context (the reconciliation's span). It carries the
    method, the URL (no query string is ever sent; session ids are not secret), the
    server and the status, never a header or a body.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, telemetry: Telemetry) -> None:
        self._inner = inner
        assert telemetry.tracer_provider is not None
        assert telemetry.call_duration is not None
        self._tracer = telemetry.tracer_provider.get_tracer("processor.telemetry.sink")
        # counted here, observed by `genesys.calls` (a plain dict costs far less per call
        # than a synchronous OpenTelemetry counter)
        self._counts = telemetry.genesys_calls
        self._duration = telemetry.call_duration
        # one attribute dict per (method, status, operation): no allocation per call
        self._attributes: dict[_AttributeKey, dict[str, AttributeValue]] = {}

    def _attrs(self, key: _AttributeKey) -> dict[str, AttributeValue]:
        attrs = self._attributes.get(key)
        if attrs is None:
            method, status, operation = key
            attrs = self._attributes[key] = {
                "method": method,
                "status": str(status),
                "operation": operation,
            }
        return attrs

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        span = self._tracer.start_span(
            request.method,
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": request.method,
                "url.full": full_url(url),
                "server.address": url.host,
            },
        )
        started = time.perf_counter()
        status: str | int = "error"
        try:
            response = await self._inner.handle_async_request(request)
            status = response.status_code
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                span.set_status(Status(StatusCode.ERROR))
            return response
        except BaseException as exc:
            span.set_attributes({"error.type": type(exc).__name__})
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()
            key = (request.method, status, _operation(url.path))
            self._counts[key] += 1
            self._duration.record(time.perf_counter() - started, self._attrs(key))

    async def aclose(self) -> None:
        await self._inner.aclose()


def instrument_sink(sink: GenesysSink, telemetry: Telemetry) -> None:
    """Wire spans and metrics into `sink` (idempotent per sink)."""
    client = sink.http
    if isinstance(client._transport, _TracedTransport):
        return
    # httpx keeps the transport private (OpenTelemetry's httpx instrumentation wraps the
    # same attribute; one wrapper doing spans and metrics costs half as much).
    client._transport = _TracedTransport(client._transport, telemetry)
