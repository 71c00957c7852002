"""Spans of one input partition: event processing, Genesys calls, publishing.

A `PartitionTracing` is made per partition worker when telemetry is on (the worker holds
None otherwise and skips every call here). Span shapes follow the OpenTelemetry messaging
conventions: a CONSUMER span `"<topic> process"` per input record, whose parent is the
record's `traceparent` (a new trace when there is none); an INTERNAL span per Genesys
reconciliation (the CLIENT spans of its HTTP requests are its children); a PRODUCER span
`"<topic> publish"` per CRM and DLQ record, whose context travels in the record's headers.
An audit record is the processing span's own output: its headers carry that span's
context and its `trace_id` field that span's trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.metrics import Histogram
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.util.types import AttributeValue

from .propagation import Headers, InHeaders, extract, inject

# Attribute names: the messaging conventions where they apply, `typing.*` for the domain.
SESSION_ID = "typing.session_id"
STATUS = "typing.status"
DECISION = "typing.decision"
OFFSET = "messaging.kafka.offset"
PARTITION = "messaging.destination.partition.id"

_FAILED_OUTCOMES = frozenset({"failed", "auth_config_error"})


class PartitionTracing:
    """Creates and ends the spans of one input partition; cheap enough for every event."""

    def __init__(
        self,
        tracer: Tracer,
        input_topic: str,
        partition: int,
        outbound_topics: Mapping[str, str],
        end_to_end: Histogram,
    ) -> None:
        self._tracer = tracer
        self.end_to_end = end_to_end
        self._process_name = f"{input_topic} process"
        # Few attributes on purpose: each costs on every event, twice (recording and OTLP
        # encoding). The topic is in the span name; the event id is in the audit record
        # that names this trace.
        self._process_attributes: dict[str, AttributeValue] = {
            "messaging.system": "kafka",
            PARTITION: str(partition),
        }
        self._publish: dict[str, tuple[str, dict[str, AttributeValue]]] = {
            kind: (
                f"{topic} publish",
                {"messaging.system": "kafka", "messaging.destination.name": topic},
            )
            for kind, topic in outbound_topics.items()
        }

    def start_event(
        self,
        headers: InHeaders | None,
        offset: int,
        started_ns: int,
        attributes: Mapping[str, AttributeValue],
    ) -> Span:
        """The processing span of one input record, child of its `traceparent` if any.

        Started after decoding (so that every attribute goes in at once) with the time
        taken before it.
        """
        return self._tracer.start_span(
            self._process_name,
            context=extract(headers),
            kind=SpanKind.CONSUMER,
            attributes={**self._process_attributes, OFFSET: offset, **attributes},
            start_time=started_ns,
        )

    def start_apply(
        self, parent: Span | None, session_id: str, kind: str, version: int
    ) -> tuple[Span, Context]:
        """The span of one reconciliation and the context to run it in.

        A call caused by an event is that event's child; a timer's call (refresh, expiry
        clear, retry) starts a trace of its own.
        """
        span = self._tracer.start_span(
            f"genesys {kind}",
            context=None if parent is None else set_span_in_context(parent),
            kind=SpanKind.INTERNAL,
            attributes={SESSION_ID: session_id, "typing.version": version},
        )
        return span, set_span_in_context(span)

    @staticmethod
    def end_apply(
        span: Span, outcome: str, http_status: int | None, attempts: int, error: str
    ) -> None:
        """Record a reconciliation's result on its span and end it."""
        attributes: dict[str, AttributeValue] = {
            "typing.outcome": outcome,
            "typing.attempts": attempts,
        }
        if http_status is not None:
            attributes["http.response.status_code"] = http_status
        span.set_attributes(attributes)
        if outcome in _FAILED_OUTCOMES:
            span.set_status(Status(StatusCode.ERROR, error or outcome))
        span.end()

    def start_publish(self, kind: str, parent: Span) -> tuple[Span, Headers]:
        """A PRODUCER span for one outbound record, and the headers that carry it."""
        name, attributes = self._publish[kind]
        span = self._tracer.start_span(
            name, context=set_span_in_context(parent), kind=SpanKind.PRODUCER, attributes=attributes
        )
        return span, inject(set_span_in_context(span))

    @staticmethod
    def headers(span: Span) -> Headers:
        """Headers carrying `span` itself (audit records: the decision is the span's own
        output, so no span of their own; half the spans per event)."""
        return inject(set_span_in_context(span))

    @staticmethod
    def end_on_ack(span: Span, ack: asyncio.Future[Any]) -> None:
        """End a publish span when the broker acknowledges (or refuses) its record."""
        ack.add_done_callback(lambda done: _end_publish(span, done))

    @staticmethod
    def trace_id(span: Span) -> str | None:
        """The 32-hex-digit trace id of `span` (None for an invalid context)."""
        context = span.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None


def _end_publish(span: Span, done: asyncio.Future[Any]) -> None:
    if done.cancelled():
        span.set_status(Status(StatusCode.ERROR, "cancelled"))
    elif (error := done.exception()) is not None:
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()
