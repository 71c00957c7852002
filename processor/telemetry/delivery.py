"""Spans of the CRM webhook worker: one per CRM-sync record, one per POST of it.

The shapes are the processor's (`tracing.PartitionTracing`, `sink`): a CONSUMER span
`"<crm topic> process"` per record, child of the record's `traceparent` (the processor's
`"<crm topic> publish"` span; a new trace when there is none), and a CLIENT span `POST` per
attempt, its child, whose context the POST carries as `traceparent` (and `tracestate`), so
that the CRM's own server span continues the trace of the typing event.

A record's span holds the messaging attributes (topic, partition, offset), its `event_id`
and, once done, the outcome (`typing.outcome`): `delivered`, `refused` (400/413/422, set
aside on the DLQ), `dead_letter` (no CRM-sync record, on the DLQ) or `given_up` (stopped,
revoked or cancelled first: delivered again from the commit); the POSTs made
(`typing.attempts`) and the last status answered. A record that did not reach the CRM (the
DLQ's) is an error, its reason the description.

No credential reaches a span: `url.full` keeps neither userinfo, query nor fragment (where a
token may ride) and names the endpoint by its scheme, host and port, its path masked as
`/REDACTED` (a webhook URL's path may be its credential: `settings.masked_path`); no header is
recorded (the `Authorization`), and an attempt that got no answer is described by its
exception's class and its message with credentials masked.
"""

from __future__ import annotations

import httpx
from aiokafka import ConsumerRecord
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.util.types import AttributeValue

from processor import __version__
from processor.logs import redact
from processor.settings import masked_path

from .core import Telemetry
from .propagation import extract, inject_http
from .sink import REDACTED, full_url
from .tracing import OFFSET, PARTITION

EVENT_ID = "typing.event_id"
OUTCOME = "typing.outcome"
ATTEMPTS = "typing.attempts"
DLQ_REASON = "typing.dlq.reason"
HTTP_STATUS = "http.response.status_code"


class DeliveryTracing:
    """Starts the span of each record the worker delivers; made once per worker."""

    def __init__(self, tracer: Tracer, url: str) -> None:
        self._tracer = tracer
        target = httpx.URL(url)
        # the same for every POST: built once
        self._post_attributes: dict[str, AttributeValue] = {
            "http.request.method": "POST",
            "url.full": full_url(target.copy_with(path=masked_path(target.path, REDACTED))),
            "server.address": target.host,
        }

    def start(self, record: ConsumerRecord[bytes, bytes], event_id: str | None) -> RecordSpan:
        """The span of `record`'s delivery, child of its `traceparent` if any; `event_id`
        None: the record is no CRM-sync record."""
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "kafka",
            "messaging.destination.name": record.topic,
            PARTITION: str(record.partition),
            OFFSET: record.offset,
        }
        if event_id is not None:
            attributes[EVENT_ID] = event_id
        span = self._tracer.start_span(
            f"{record.topic} process",
            context=extract(record.headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        return RecordSpan(self._tracer, span, self._post_attributes)


class RecordSpan:
    """One record's span, its POSTs' spans, and what they answered."""

    __slots__ = ("_post_attributes", "_span", "_tracer", "attempts", "context", "status")

    def __init__(
        self, tracer: Tracer, span: Span, post_attributes: dict[str, AttributeValue]
    ) -> None:
        self._tracer = tracer
        self._span = span
        # the record's span as the current one: the worker's log lines name its trace
        self.context = set_span_in_context(span)
        self._post_attributes = post_attributes
        self.attempts = 0
        self.status: int | None = None

    def start_post(self, headers: dict[str, str]) -> tuple[Span, dict[str, str]]:
        """A CLIENT span for one POST, and `headers` with its `traceparent` added."""
        self.attempts += 1
        post = self._tracer.start_span(
            "POST", context=self.context, kind=SpanKind.CLIENT, attributes=self._post_attributes
        )
        sent = dict(headers)  # the caller's are the record's, reused by every attempt
        inject_http(set_span_in_context(post), sent)
        return post, sent

    def answered(self, post: Span, status: int) -> None:
        """End a POST's span with the status the endpoint answered (an error from 400 on,
        as the HTTP conventions have it for a client)."""
        self.status = status
        post.set_attribute(HTTP_STATUS, status)
        if status >= 400:
            post.set_status(Status(StatusCode.ERROR))
        post.end()

    @staticmethod
    def failed(post: Span, error_type: str, detail: str) -> None:
        """End a POST's span that got no answer: `error_type` (the exception's class),
        `detail` (what the library said; credentials masked here)."""
        post.set_attribute("error.type", error_type)
        post.set_status(Status(StatusCode.ERROR, redact(detail)))
        post.end()

    def end(self, outcome: str, dlq_reason: str | None = None) -> None:
        """Record what became of the record, and end its span."""
        attributes: dict[str, AttributeValue] = {OUTCOME: outcome, ATTEMPTS: self.attempts}
        if self.status is not None:
            attributes[HTTP_STATUS] = self.status
        if dlq_reason is not None:
            attributes[DLQ_REASON] = dlq_reason
            self._span.set_status(Status(StatusCode.ERROR, dlq_reason))
        self._span.set_attributes(attributes)
        self._span.end()


def delivery_tracing(telemetry: Telemetry | None, url: str) -> DeliveryTracing | None:
    """The worker's span helper; None when telemetry is off (the worker then skips every
    call, and its POSTs carry no `traceparent`)."""
    if telemetry is None or telemetry.tracer_provider is None:
        return None
    return DeliveryTracing(telemetry.tracer_provider.get_tracer("processor", __version__), url)
