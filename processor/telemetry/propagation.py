"""W3C trace context in Kafka record headers (`traceparent`, `tracestate`), and in HTTP
request headers (the CRM webhook's POSTs).

Kafka headers are `(str, bytes)` pairs; the propagator works on text. The getter and setter
below adapt the two, so OpenTelemetry's own `TraceContextTextMapPropagator` does the parsing
and formatting (and its validation: a malformed `traceparent` starts a new trace).
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Headers = list[tuple[str, bytes]]
InHeaders = Sequence[tuple[str, bytes | None]]


class _HeaderGetter(Getter[InHeaders]):
    def get(self, carrier: InHeaders, key: str) -> list[str] | None:
        values = [
            value.decode("latin-1")
            for name, value in carrier
            if value is not None and name.lower() == key
        ]
        return values or None

    def keys(self, carrier: InHeaders) -> list[str]:
        return [name for name, _ in carrier]


class _HeaderSetter(Setter[Headers]):
    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier.append((key, value.encode("latin-1")))


_GETTER = _HeaderGetter()
_SETTER = _HeaderSetter()
_PROPAGATOR = TraceContextTextMapPropagator()


def extract(headers: InHeaders | None) -> Context | None:
    """The remote parent named by `headers`, or None (the span then starts a new trace)."""
    if not headers:
        return None
    return _PROPAGATOR.extract(headers, getter=_GETTER)


def inject(context: Context) -> Headers:
    """Fresh headers carrying the span of `context` as `traceparent` (and `tracestate`)."""
    headers: Headers = []
    _PROPAGATOR.inject(headers, context=context, setter=_SETTER)
    return headers


def inject_http(context: Context, headers: dict[str, str]) -> None:
    """Add the span of `context` to an HTTP request's `headers` as `traceparent` (and
    `tracestate`), replacing any there."""
    _PROPAGATOR.inject(headers, context=context)


def header(headers: InHeaders | None, name: str) -> str | None:
    """The first header called `name` (case-insensitive) as text, or None."""
    values = _GETTER.get(headers or (), name.lower())
    return values[0] if values else None
