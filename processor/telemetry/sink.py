"""Instrumenting a `GenesysSink` from the outside (the sink itself knows nothing of telemetry).

- every HTTP request of its client: a CLIENT span (OpenTelemetry's httpx instrumentation,
  bound to our tracer provider, no global patching), a count by method and status and a
  latency sample (a thin transport wrapper, which also sees requests that fail without a
  status: `status="error"`);
- the time each call waits for rate budget (the limiter's `acquire`, timed);
- breaker state, waiting callers and 429 pauses are read by gauges from the sink's public
  properties (see `Telemetry`).

Only span and metric attributes the request line holds are recorded: method, status, the
API operation and the host. Headers (the bearer token) and bodies (client credentials) never.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    from processor.sink.client import GenesysSink

    from .core import Telemetry

_AttributeKey = tuple[str, str | int, str]


def _operation(path: str) -> str:
    if path.endswith("/oauth/token"):
        return "token"
    if path.endswith("/typing"):
        return "typing"
    return "session"


class _MeteredTransport(httpx.AsyncBaseTransport):
    """Counts and times each request the wrapped transport sends."""

    def __init__(self, inner: httpx.AsyncBaseTransport, telemetry: Telemetry) -> None:
        self._inner = inner
        assert telemetry.call_count is not None
        assert telemetry.call_duration is not None
        self._count = telemetry.call_count
        self._duration = telemetry.call_duration
        # one attribute dict per (method, status, operation): no allocation per call
        self._attributes: dict[_AttributeKey, dict[str, AttributeValue]] = {}

    def _attrs(self, method: str, status: str | int, operation: str) -> dict[str, AttributeValue]:
        key = (method, status, operation)
        attrs = self._attributes.get(key)
        if attrs is None:
            attrs = self._attributes[key] = {
                "method": method,
                "status": str(status),
                "operation": operation,
            }
        return attrs

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        status: str | int = "error"
        try:
            response = await self._inner.handle_async_request(request)
            status = response.status_code
            return response
        finally:
            attrs = self._attrs(request.method, status, _operation(request.url.path))
            self._count.add(1, attrs)
            self._duration.record(time.perf_counter() - started, attrs)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _http_client(sink: GenesysSink) -> httpx.AsyncClient | None:
    # GenesysSink keeps its client private; it is the one object we must reach into.
    client = getattr(sink, "http", None) or getattr(sink, "_http", None)
    return client if isinstance(client, httpx.AsyncClient) else None


def instrument_sink(sink: GenesysSink, telemetry: Telemetry) -> None:
    """Wire spans and metrics into `sink` (idempotent per sink)."""
    if getattr(sink, "_typing_telemetry", None) is telemetry:
        return
    sink._typing_telemetry = telemetry  # type: ignore[attr-defined]
    client = _http_client(sink)
    if client is not None:
        # httpx keeps the transport private too; the OpenTelemetry instrumentation wraps
        # the same attribute.
        transport = client._transport
        client._transport = _MeteredTransport(transport, telemetry)
        HTTPXClientInstrumentor.instrument_client(
            client,
            tracer_provider=telemetry.tracer_provider,
            # our own `genesys.call.*` instruments cover HTTP metrics
            meter_provider=NoOpMeterProvider(),
        )
    if telemetry.ratelimit_wait is not None:
        limiter = sink.limiter
        limiter.acquire = _timed(limiter.acquire, telemetry.ratelimit_wait.record)  # type: ignore[method-assign,assignment]


def _timed(
    acquire: Callable[..., Awaitable[bool]], record: Callable[[float], None]
) -> Callable[..., Awaitable[bool]]:
    @functools.wraps(acquire)
    async def timed(*args: Any, **kwargs: Any) -> bool:
        started = time.perf_counter()
        try:
            return await acquire(*args, **kwargs)
        finally:
            record(time.perf_counter() - started)

    return timed
