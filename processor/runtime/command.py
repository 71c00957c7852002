"""`typing-processor run`: the service's life cycle, signals and recovery from outages."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
from collections.abc import AsyncIterator

from aiokafka.errors import KafkaError

from processor.asgi import serve_in_background
from processor.clock import within_grace
from processor.settings import ConfigError, Settings
from processor.sink.client import GenesysSink
from processor.sink.config import SinkConfig
from processor.stopsignals import take_stop_request
from processor.telemetry import OpsEndpoint, Telemetry
from processor.telemetry.http import Readiness

from .abandoned import report_abandoned_kafka_work
from .kafka import TopicError, keep_running
from .service import TypingProcessor
from .tlscheck import check_tls

log = logging.getLogger(__name__)

# Kubernetes probes and Prometheus reach the pod on its IP, an IPv6 one in an IPv6-only
# cluster: listen on every interface, IPv6 and IPv4 at once (`::`), or on IPv4 alone where
# the kernel has no IPv6.
HTTP_HOST = "::"
HTTP_HOST_IPV4 = "0.0.0.0"  # noqa: S104
# what binding `::` fails with when the kernel has no IPv6, or it is off
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)
# SIGTERM to exit within 10 s (DESIGN §5): draining (calls landing within the revoke grace,
# the last flush and commit) gets this much of it; a cluster that does not answer by then
# is given up on (input since the last commit is processed again), leaving the rest for
# the telemetry's last export.
DRAIN_BUDGET_S = 6.5


@contextlib.asynccontextmanager
async def ops_endpoint(
    telemetry: Telemetry,
    port: int,
    host: str = HTTP_HOST,
    *,
    readiness: Readiness | None = None,
) -> AsyncIterator[int]:
    """`/metrics`, `/healthz` and `/readyz` on `port` (0 = a free one) for the block.

    Yields the bound port. A port that cannot be bound stops start-up (`ConfigError`
    naming `TYPING_HTTP_PORT`): run without its probes, a pod would be restarted by its
    liveness probe for ever, far from the cause. `readiness` decides `/readyz` (default:
    the processors that `telemetry` observes).
    """
    endpoint = OpsEndpoint(telemetry, readiness)
    async with endpoint.monitoring(), contextlib.AsyncExitStack() as stack:
        try:
            try:
                listening = await stack.enter_async_context(
                    serve_in_background(endpoint.app, host, port, name="ops")
                )
            except OSError as exc:
                if host != HTTP_HOST or exc.errno not in _NO_IPV6:
                    raise
                listening = await stack.enter_async_context(
                    serve_in_background(endpoint.app, HTTP_HOST_IPV4, port, name="ops")
                )
        except OSError as exc:
            raise ConfigError(
                f"TYPING_HTTP_PORT: cannot listen on port {port} ({exc.strerror or exc})"
            ) from None
        log.info("serving /metrics, /healthz and /readyz on port %d", listening.port)
        yield listening.port


@contextlib.asynccontextmanager
async def observability(
    telemetry: Telemetry,
    port: int,
    host: str = HTTP_HOST,
    *,
    readiness: Readiness | None = None,
) -> AsyncIterator[int]:
    """`ops_endpoint` for the block; after it, the endpoint stops while `telemetry` shuts
    down (its last export), side by side. Yields the bound port.

    SIGTERM to exit is 10 s (DESIGN §5), `DRAIN_BUDGET_S` of it for draining. A request in
    flight holds the endpoint's stop for up to `asgi.STOP_GRACE_S` (a `/readyz` asking a cluster
    that does not answer, just when draining takes its whole budget) and a collector that
    does not answer holds the last export for up to `Telemetry.shutdown`'s bound: one after the
    other, they took their sum, past the 10 s.
    """
    exporting: asyncio.Future[None] | None = None
    try:
        async with ops_endpoint(telemetry, port, host, readiness=readiness) as bound:
            try:
                yield bound
            finally:
                exporting = asyncio.ensure_future(asyncio.to_thread(telemetry.shutdown))
    finally:
        if exporting is None:  # the endpoint did not start
            telemetry.shutdown()
        else:
            await exporting


async def run_service(settings: Settings, telemetry: Telemetry | None = None) -> int:
    """Run until SIGTERM/SIGINT; a lost broker is retried, never fatal. Returns exit code.

    Telemetry comes from the `OTEL_*` environment unless given. TLS that the cluster does
    not speak stops start-up (`ConfigError`, `check_tls`).
    """
    await check_tls(settings.kafka)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if take_stop_request():  # signalled while it was starting, before these handlers
        stop.set()
    telemetry = telemetry or Telemetry.from_environment()
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    telemetry.instrument_sink(sink)
    report_abandoned_kafka_work(loop)
    try:
        async with observability(telemetry, settings.typing.http_port):
            return await _run_until_stopped(settings, sink, telemetry, stop)
    finally:
        await sink.aclose()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _run_until_stopped(
    settings: Settings, sink: GenesysSink, telemetry: Telemetry, stop: asyncio.Event
) -> int:
    async def run_once() -> None:
        processor = TypingProcessor(settings, sink, telemetry=telemetry)
        if not await within_grace(processor.run(stop), stop, DRAIN_BUDGET_S):
            log.warning(
                "the cluster did not answer within %.1f s of the stop: leaving without the"
                " last commit (input since the one before is processed again)",
                DRAIN_BUDGET_S,
            )
        telemetry.last_failure = None

    def report(exc: KafkaError | OSError) -> None:
        telemetry.last_failure = str(exc)

    try:
        await keep_running(run_once, stop, "processing", on_failure=report)
    except TopicError as exc:
        log.error("topic set-up is wrong: %s", exc)
        return 2
    log.info("stopped cleanly")
    return 0
