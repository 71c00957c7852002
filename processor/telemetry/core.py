"""`Telemetry`: the tracer provider, meter provider and instruments of one process.

Built once at start-up and passed to whatever reports (no global providers are set, so
tests and embedders can run several side by side). `Telemetry.disabled()` is the default
everywhere: nothing is created and the hot paths skip every call.

Configuration is OpenTelemetry's own environment:
- `OTEL_SDK_DISABLED=true` turns traces and metrics off (health and readiness still work).
- `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
  `..._METRICS_ENDPOINT`) enables OTLP/HTTP export; the exporters read the other
  `OTEL_EXPORTER_OTLP_*` variables (headers, compression, certificates) themselves. The
  timeouts (`OTEL_EXPORTER_OTLP_TIMEOUT`, `..._TRACES_TIMEOUT`, `..._METRICS_TIMEOUT`) are
  read here, in milliseconds as the specification says: the SDK would read them as seconds.
  `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` are lists (default `otlp`): a signal goes
  over OTLP only when its list names `otlp` and not `none`. `prometheus` asks for nothing
  more, since `/metrics` is always served.
- `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_BSP_*`,
  `OTEL_METRIC_EXPORT_INTERVAL` are applied by the SDK.
- The span limits (`OTEL_*_LIMIT`) too, but an empty one is its default here, as
  OpenTelemetry's specification says: the SDK alone would read it as no limit.
Prometheus text is always available through `render_prometheus()` (served on `/metrics`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit, urlunsplit

from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation
from opentelemetry.metrics import Counter as OtelCounter
from opentelemetry.sdk.environment_variables import (
    OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT,
    OTEL_LINK_ATTRIBUTE_COUNT_LIMIT,
    OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT,
    OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT,
    OTEL_SPAN_EVENT_COUNT_LIMIT,
    OTEL_SPAN_LINK_COUNT_LIMIT,
)
from opentelemetry.sdk.metrics import ExemplarFilter, MeterProvider, TraceBasedExemplarFilter
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import TypeAdapter, ValidationError

from processor import PRODUCT, __version__
from processor.settings import redacted_url

from .tracing import PartitionTracing

if TYPE_CHECKING:
    from processor.sink.client import GenesysSink

log = logging.getLogger(__name__)

# Seconds; from sub-millisecond HTTP calls on a LAN to a minute of backlog.
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# Seconds; from an empty changelog to one read for minutes.
RESTORE_BUCKETS_S = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
_BREAKER_STATES = ("closed", "half_open", "open")
_Callback = Callable[[CallbackOptions], Iterable[Observation]]
_SUPPORTED_PROTOCOL = "http/protobuf"
# Waits shorter than this are not waits (the budget was there); they are not recorded.
MIN_WAIT_S = 0.001
# The most `Telemetry.shutdown` waits for the last exports: SIGTERM to exit is 10 s (DESIGN §5),
# and an unanswering collector would hold each signal for the exporter's timeout (10 s).
SHUTDOWN_TIMEOUT_S = 3.0


class CountersLike(Protocol):
    """What a processor counts (`processor.runtime.partition.Counters`)."""

    events: int
    dead_letters: int
    crm_records: int
    audit_records: int
    changelog_records: int
    decisions: Counter[str]


class PartitionStats(Protocol):
    """One partition's gauges, read on collection."""

    @property
    def partition(self) -> int: ...
    @property
    def tracked_sessions(self) -> int: ...
    @property
    def queued_work(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def lag(self) -> int | None: ...


class RestoreStats(Protocol):
    """One partition being restored, read on collection and by readiness."""

    @property
    def partition(self) -> int: ...
    @property
    def seconds(self) -> float: ...
    @property
    def records(self) -> int: ...
    @property
    def remaining(self) -> int | None: ...


class Observed(Protocol):
    """A running processor as telemetry and the readiness probe see it."""

    @property
    def counters(self) -> CountersLike:
        """Totals since the processor started."""
        ...

    @property
    def ready(self) -> bool:
        """Partitions assigned and restored."""
        ...

    @property
    def problem(self) -> str | None:
        """Why a partition stopped committing, if one did."""
        ...

    def partition_stats(self) -> Sequence[PartitionStats]:
        """Gauges of every owned partition."""
        ...

    def restores(self) -> Sequence[RestoreStats]:
        """Partitions whose store is being restored now."""
        ...

    def unassigned(self) -> str | None:
        """While the processor waits for its group to assign it partitions: for how long
        (and what a long wait means)."""
        ...

    async def broker_reachable(self) -> bool:
        """True when the Kafka cluster answers now."""
        ...


_BOOL = TypeAdapter(bool)


def _truthy(value: str | None) -> bool:
    """A boolean variable as `settings.OtelSettings` reads it (unset or unreadable: false)."""
    try:
        return bool(value and value.strip() and _BOOL.validate_python(value.strip()))
    except ValidationError:
        return False


def _otlp_endpoint(env: Mapping[str, str], signal: str) -> str | None:
    """Where OTLP/HTTP sends `signal` ("TRACES" or "METRICS"), or None when not exported."""
    # a list, as OpenTelemetry specifies; empty is unset, as `settings.OtelSettings` reads it
    listed = env.get(f"OTEL_{signal}_EXPORTER") or "otlp"
    exporters = {name.strip().lower() for name in listed.split(",")}
    if "otlp" not in exporters or "none" in exporters:
        return None
    endpoint = env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    if not endpoint:
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if not base:
            return None
        # OTLP appends `v1/<signal>` to the base URL's path, so a query stays the query
        # (appended to the text, it would swallow the path); a per-signal URL is used as is
        parts = urlsplit(base)
        endpoint = urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/v1/{signal.lower()}"))
    protocol = env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", _SUPPORTED_PROTOCOL
    )
    if protocol != _SUPPORTED_PROTOCOL:
        log.warning(
            "OTLP protocol %s is not available; exporting %s over %s",
            protocol,
            signal.lower(),
            _SUPPORTED_PROTOCOL,
        )
    return endpoint


def _otlp_timeout_s(env: Mapping[str, str], signal: str) -> float | None:
    """The OTLP export timeout of `signal` in seconds, or None for the SDK's default (10 s).

    The variables hold milliseconds (the specification; other languages' SDKs read them
    so, and a platform sets them once for all): this SDK reads seconds, and a shared
    `10000` would hold each export on a silent collector for hours. 0 is the default.
    """
    raw = env.get(f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT") or env.get("OTEL_EXPORTER_OTLP_TIMEOUT")
    try:
        millis = int(raw.strip()) if raw else 0
    except ValueError:
        return None  # `settings.OtelSettings` stops start-up on it; embedders get the default
    return millis / 1000 if millis > 0 else None


def _exemplar_filter() -> ExemplarFilter | None:
    """`OTEL_METRICS_EXEMPLAR_FILTER` as `settings.OtelSettings` reads it: empty is unset (the
    default, trace-based), where the SDK alone would raise. None: the SDK reads it."""
    if os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER", "x").strip():
        return None
    return TraceBasedExemplarFilter()


# OpenTelemetry's default count limit (the specification's and the SDK's).
_DEFAULT_COUNT_LIMIT = 128


def _span_limits() -> SpanLimits:
    """The SDK's span limits, with a blank `OTEL_*_LIMIT` read as unset (its default), as
    `settings.OtelSettings` and OpenTelemetry's specification read it: the SDK alone takes a
    blank limit as no limit at all."""
    read = SpanLimits()  # as the SDK reads the environment; a blank global is its default
    # what each limit that has a global one falls back to: the global, else the default
    defaults = {
        OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT: ("max_span_attributes", read.max_attributes),
        OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT: ("max_event_attributes", read.max_attributes),
        OTEL_LINK_ATTRIBUTE_COUNT_LIMIT: ("max_link_attributes", read.max_attributes),
        OTEL_SPAN_EVENT_COUNT_LIMIT: ("max_events", _DEFAULT_COUNT_LIMIT),
        OTEL_SPAN_LINK_COUNT_LIMIT: ("max_links", _DEFAULT_COUNT_LIMIT),
        OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT: (
            "max_span_attribute_length",
            SpanLimits.UNSET if read.max_attribute_length is None else read.max_attribute_length,
        ),
    }
    blank = {
        argument: default
        for variable, (argument, default) in defaults.items()
        if not os.environ.get(variable, "unset").strip()
    }
    # the limits not given here are read by the SDK again, as above
    return SpanLimits(**blank) if blank else read


def _resource() -> Resource:
    defaults = Resource.create({"service.name": PRODUCT, "service.version": __version__})
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the defaults
    return defaults.merge(OTELResourceDetector().detect())


class Telemetry:
    """Providers and instruments of one process (or a disabled stand-in)."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        registry: CollectorRegistry | None,
        *,
        processor_metrics: bool = True,
    ) -> None:
        """Prefer `Telemetry.from_environment()` or `Telemetry.disabled()`.

        `processor_metrics=False` leaves out the instruments of `run` (events, Genesys
        calls, partitions, readiness): a process that is no processor (the CRM webhook
        worker) registers its own and must not report `typing_ready 0`.
        """
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.registry = registry
        self._observed: list[Observed] = []
        # signal -> OTLP/HTTP URL it is exported to
        self.otlp_endpoints: dict[str, str] = {}
        # totals of processors that stopped, so counters stay monotonic across restarts
        self._retired: Counter[tuple[str, str]] = Counter()
        self._sinks: list[GenesysSink] = []
        self.last_failure: str | None = None
        """Why the processor last stopped and is being restarted (for `/readyz`)."""
        self.loop_lag_s = 0.0
        self._tracer: Tracer | None = None
        self._end_to_end: Histogram | None = None
        # HTTP calls to Genesys by (method, status, operation), counted by the sink's
        # transport wrapper and reported by the `genesys.calls` observable counter
        self.genesys_calls: Counter[tuple[str, str | int, str]] = Counter()
        self.call_duration: Histogram | None = None
        self.ratelimit_wait: Histogram | None = None
        # duration, records read and sessions of finished restores
        self._restores: tuple[Histogram, OtelCounter, OtelCounter] | None = None
        if tracer_provider is not None:
            self._tracer = tracer_provider.get_tracer("processor", __version__)
        if meter_provider is not None:
            meter = meter_provider.get_meter("processor", __version__)
            meter.create_observable_gauge(
                "typing.event_loop.lag",
                [self._observe_loop_lag],
                unit="s",
                description="How late the event loop ran a timer last time it was sampled",
            )
            if processor_metrics:
                self._create_instruments(meter)

    # ------------------------------------------------------------------ construction

    @classmethod
    def disabled(cls) -> Telemetry:
        """No traces, no metrics: the default wherever telemetry is optional."""
        return cls(None, None, None)

    @classmethod
    def from_environment(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        span_processors: Iterable[SpanProcessor] = (),
        metric_readers: Iterable[MetricReader] = (),
        processor_metrics: bool = True,
    ) -> Telemetry:
        """Traces and metrics configured from the standard `OTEL_*` variables.

        `environ` (default: the process environment) decides what is on and where it
        goes; the SDK and the exporters read their finer settings (headers, timeouts,
        certificates, sampler, resource attributes, batch sizes) from the process
        environment themselves. `span_processors` / `metric_readers` add destinations
        (tests pass in-memory ones). `processor_metrics`: see `Telemetry`.
        """
        env = os.environ if environ is None else environ
        if _truthy(env.get("OTEL_SDK_DISABLED")):
            log.info("OpenTelemetry disabled by OTEL_SDK_DISABLED")
            return cls.disabled()
        resource = _resource()
        # no SDK exit hooks: `shutdown` stops the providers within its bound, and a hook would
        # wait (or warn) again at exit for an export it left behind
        tracer_provider = TracerProvider(
            resource=resource, span_limits=_span_limits(), shutdown_on_exit=False
        )
        for processor in span_processors:
            tracer_provider.add_span_processor(processor)
        if traces_to := _otlp_endpoint(env, "TRACES"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            from .otlpsession import otlp_session

            exporter = OTLPSpanExporter(
                endpoint=traces_to,
                timeout=_otlp_timeout_s(env, "TRACES"),
                session=otlp_session("TRACES"),
            )
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        registry = CollectorRegistry(auto_describe=True)
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers: list[MetricReader] = [PrometheusMetricReader(registry=registry), *metric_readers]
        if metrics_to := _otlp_endpoint(env, "METRICS"):
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            from .otlpsession import otlp_session

            metric_exporter = OTLPMetricExporter(
                endpoint=metrics_to,
                timeout=_otlp_timeout_s(env, "METRICS"),
                session=otlp_session("METRICS"),
            )
            readers.append(PeriodicExportingMetricReader(metric_exporter))
        meter_provider = MeterProvider(
            metric_readers=readers,
            resource=resource,
            shutdown_on_exit=False,
            exemplar_filter=_exemplar_filter(),
        )
        telemetry = cls(
            tracer_provider, meter_provider, registry, processor_metrics=processor_metrics
        )
        for signal, url in (("traces", traces_to), ("metrics", metrics_to)):
            if url:
                telemetry.otlp_endpoints[signal] = url
                # the URL may carry a credential (userinfo, a token in the query): shown
                # as `config` shows a URL, whatever the query's names
                log.info("exporting %s over OTLP/HTTP to %s", signal, redacted_url(url))
        return telemetry

    @property
    def enabled(self) -> bool:
        """True when spans and metrics are recorded."""
        return self._tracer is not None

    # ------------------------------------------------------------------ instruments

    def _create_instruments(self, meter: Meter) -> None:
        meter.create_observable_counter(
            "genesys.calls",
            [self._observe_calls],
            unit="{call}",
            description="HTTP calls to Genesys by method, status and operation",
        )
        self.call_duration = meter.create_histogram(
            "genesys.call.duration",
            unit="s",
            description="Latency of HTTP calls to Genesys",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )
        self.ratelimit_wait = meter.create_histogram(
            "genesys.ratelimit.wait",
            unit="s",
            description="Time work waited for the client's API budget (waits >= 1 ms)",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )
        self._end_to_end = meter.create_histogram(
            "typing.end_to_end.duration",
            unit="s",
            description="From an event's occurred_at to its change being applied in Genesys",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )
        meter.create_observable_counter(
            "typing.events",
            [self._observe_decisions],
            unit="{event}",
            description="Decisions taken on typing events (audit results; DLQ = dead_letter)",
        )
        meter.create_observable_counter(
            "typing.records.produced",
            [self._observe_records],
            unit="{record}",
            description="Records written to the outbound topics, by kind",
        )
        gauges = (
            ("typing.sessions.tracked", "{session}", "Sessions held in the state stores"),
            ("typing.reconciliations.queued", "{session}", "Sessions with a Genesys call due"),
            ("typing.reconciliations.in_flight", "{call}", "Genesys reconciliations running"),
            ("typing.consumer.lag", "{record}", "Input records not processed yet"),
        )
        for name, unit, description in gauges:
            meter.create_observable_gauge(
                name, [self._partition_gauge(name)], unit=unit, description=description
            )
        meter.create_observable_gauge(
            "genesys.ratelimit.tokens",
            [self._observe_tokens],
            unit="{call}",
            description="API budget at hand now (negative: spent ahead, in debt)",
        )
        meter.create_observable_gauge(
            "genesys.ratelimit.share",
            [self._observe_share],
            description="This replica's share of the OAuth client's budget",
        )
        meter.create_observable_gauge(
            "genesys.ratelimit.paused",
            [self._observe_paused],
            unit="s",
            description="Seconds left of a 429 pause",
        )
        meter.create_observable_gauge(
            "genesys.circuit_breaker.state",
            [self._observe_breaker],
            description="1 for the circuit breaker's current state (closed, half_open, open)",
        )
        self._restores = (
            meter.create_histogram(
                "typing.restore.duration",
                unit="s",
                description="From a partition's assignment to its store restored, by partition",
                explicit_bucket_boundaries_advisory=RESTORE_BUCKETS_S,
            ),
            meter.create_counter(
                "typing.restore.records",
                unit="{record}",
                description="Changelog records read by finished restores, by partition",
            ),
            meter.create_counter(
                "typing.restore.sessions",
                unit="{session}",
                description="Sessions held by stores once restored, by partition",
            ),
        )
        meter.create_observable_gauge(
            "typing.restore.elapsed",
            [self._observe_restores("seconds")],
            unit="s",
            description="How long each restore under way has run, by partition",
        )
        meter.create_observable_gauge(
            "typing.restore.remaining",
            [self._observe_restores("remaining")],
            unit="{offset}",
            description="Changelog offsets each restore under way has left to read",
        )
        meter.create_observable_gauge(
            "typing.ready",
            [self._observe_ready],
            description="1 when partitions are assigned and restored",
        )

    def _observe_decisions(self, options: CallbackOptions) -> Iterable[Observation]:
        # (the exporter's thread: the loop may add a key meanwhile, so each dict is copied
        # whole, which the GIL makes one step, before it is gone through)
        retired = list(self._retired.items())
        totals = Counter({k[1]: v for k, v in retired if k[0] == "decision"})
        for observed in list(self._observed):
            counters = observed.counters
            totals.update(dict(counters.decisions))
            totals["dead_letter"] += counters.dead_letters
        return [Observation(v, {"decision": k}) for k, v in sorted(totals.items())]

    def _observe_calls(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(count, {"method": method, "status": str(status), "operation": operation})
            for (method, status, operation), count in list(self.genesys_calls.items())
        ]

    def _observe_records(self, options: CallbackOptions) -> Iterable[Observation]:
        totals = Counter({k[1]: v for k, v in list(self._retired.items()) if k[0] == "record"})
        for observed in list(self._observed):
            totals.update(_record_counts(observed.counters))
        return [Observation(v, {"kind": k}) for k, v in sorted(totals.items())]

    def _partition_gauge(self, name: str) -> _Callback:
        field = {
            "typing.sessions.tracked": "tracked_sessions",
            "typing.reconciliations.queued": "queued_work",
            "typing.reconciliations.in_flight": "in_flight",
            "typing.consumer.lag": "lag",
        }[name]

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            out = []
            for observed in list(self._observed):
                for stats in observed.partition_stats():
                    value = getattr(stats, field)
                    if value is not None:
                        out.append(Observation(value, {"partition": str(stats.partition)}))
            return out

        return observe

    def _observe_restores(self, field: str) -> _Callback:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            out = []
            for observed in list(self._observed):
                for stats in observed.restores():
                    value = getattr(stats, field)
                    if value is not None:
                        out.append(Observation(value, {"partition": str(stats.partition)}))
            return out

        return observe

    def record_restore(self, partition: int, seconds: float, records: int, sessions: int) -> None:
        """A partition's store restored: `seconds` since its assignment, `records` read from
        the changelog, `sessions` held."""
        if self._restores is None:
            return
        duration, records_read, sessions_held = self._restores
        attributes = {"partition": str(partition)}
        duration.record(seconds, attributes)
        records_read.add(records, attributes)
        sessions_held.add(sessions, attributes)

    def _observe_tokens(self, options: CallbackOptions) -> Iterable[Observation]:
        # (the exporter's thread: a read that changes nothing)
        return [Observation(sink.budget.peek()) for sink in self._sinks[:1]]

    def _observe_share(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(sink.budget.share) for sink in self._sinks[:1]]

    def _observe_paused(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(max((s.budget.paused_for() for s in self._sinks), default=0.0))]

    def record_budget_wait(self, seconds: float) -> None:
        """Work waited `seconds` for API budget (waits under 1 ms are not waits)."""
        if self.ratelimit_wait is not None and seconds >= MIN_WAIT_S:
            self.ratelimit_wait.record(seconds)

    def _observe_breaker(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self._sinks:
            return []
        current = {str(sink.breaker.state.value) for sink in self._sinks}
        return [Observation(int(state in current), {"state": state}) for state in _BREAKER_STATES]

    def _observe_ready(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(int(any(o.ready for o in self._observed)))]

    def _observe_loop_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.loop_lag_s)]

    # ------------------------------------------------------------------ wiring

    def observe(self, observed: Observed) -> None:
        """Report on `observed` (a running processor) until `forget`."""
        self._observed.append(observed)

    def forget(self, observed: Observed) -> None:
        """Stop observing; its counts are kept so that counters never go back."""
        if observed in self._observed:
            self._observed.remove(observed)
            counters = observed.counters
            for decision, count in counters.decisions.items():
                self._retired["decision", decision] += count
            self._retired["decision", "dead_letter"] += counters.dead_letters
            for kind, count in _record_counts(counters).items():
                self._retired["record", kind] += count

    @property
    def observed(self) -> list[Observed]:
        """Processors being observed now (for readiness)."""
        return list(self._observed)

    def instrument_sink(self, sink: GenesysSink) -> None:
        """Spans and metrics for the sink's HTTP calls, rate-limit waits and breaker."""
        if not self.enabled:
            return
        from .sink import instrument_sink

        instrument_sink(sink, self)
        self._sinks.append(sink)

    def partition_tracing(
        self, input_topic: str, partition: int, outbound_topics: Mapping[str, str]
    ) -> PartitionTracing | None:
        """Span helper for one partition worker; None when telemetry is off."""
        if self._tracer is None or self._end_to_end is None:
            return None
        return PartitionTracing(
            self._tracer, input_topic, partition, outbound_topics, self._end_to_end
        )

    # ------------------------------------------------------------------ output

    def render_prometheus(self) -> bytes:
        """Every metric in the Prometheus text format (empty when metrics are off)."""
        if self.registry is None:
            return b""
        return generate_latest(self.registry)

    def force_flush(self, timeout_s: float = 5.0) -> None:
        """Export what is buffered (spans and metrics) now."""
        millis = int(timeout_s * 1000)
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush(millis)
        if self.meter_provider is not None:
            self.meter_provider.force_flush(millis)

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Flush and stop the exporters, waiting at most `timeout_s` (call once, at exit).

        Traces and metrics are flushed side by side. An export still in flight at the deadline
        (a collector that accepts and never answers holds it for the exporter's whole timeout)
        is left to its daemon thread and ends with the process: the offsets are committed by
        then, and only that last batch of telemetry is lost.
        """
        started = time.monotonic()
        steps: list[Callable[[], object]] = []
        if self.tracer_provider is not None:
            # takes no timeout: the thread's join below bounds it
            steps.append(self.tracer_provider.shutdown)
        if self.meter_provider is not None:
            steps.append(
                functools.partial(self.meter_provider.shutdown, timeout_millis=timeout_s * 1000)
            )
        # plain daemon threads, not an executor: the interpreter joins an executor's at exit
        threads = [
            threading.Thread(target=_logged, args=(step,), name="telemetry-shutdown", daemon=True)
            for step in steps
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, started + timeout_s - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            log.warning("telemetry export unfinished after %.1f s; not waiting for it", timeout_s)
        else:
            log.debug("telemetry shut down in %.3f s", time.monotonic() - started)


def _logged(step: Callable[[], object]) -> None:
    """Run `step`, logging a failure (a thread's uncaught exception would bypass the JSON log)."""
    try:
        step()
    except Exception:
        log.exception("telemetry shutdown failed")


def _record_counts(counters: CountersLike) -> dict[str, int]:
    return {
        "crm": counters.crm_records,
        "audit": counters.audit_records,
        "dlq": counters.dead_letters,
        "changelog": counters.changelog_records,
    }
