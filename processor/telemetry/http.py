"""The operational HTTP endpoint of `run` and `crm-webhook`: `/metrics`, `/healthz`, `/readyz`.

- `/healthz`: the process is alive and its event loop responsive. The handler runs on the
  processor's own loop, so a blocked loop cannot answer at all (the probe times out); a
  sampler also measures how late the loop runs timers, and a stalled sampler fails it.
- `/readyz`: 200 only when a processor runs, its partitions are assigned and restored, and
  the Kafka cluster answers. 503 (with the reason) otherwise, e.g. while restoring (naming
  each partition restoring, for how long and how far its read has come) or while the group
  rebalances (for how long, and past a minute what that means). Another
  worker (the CRM webhook) passes its own readiness check.
- `/metrics`: Prometheus text of every OpenTelemetry instrument.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .core import RestoreStats, Telemetry

LOOP_SAMPLE_S = 0.5
# The loop sampler must have run within this long for the process to count as healthy.
STALL_S = 10.0

# Restores `/readyz` names one by one; a replica restoring hundreds says how many more.
MAX_RESTORES_NAMED = 16
# An exception's text in a `/readyz` reason (the processor's `problem` too), and any reason
# whole (the restores named fit), are cut to these: a message of megabytes would otherwise go
# to every probe.
MAX_FAILURE_CHARS = 500
MAX_REASON_CHARS = 2000

Readiness = Callable[[], Awaitable[str | None]]
"""Why the worker is not ready (the `/readyz` reason), or None when it is."""


class LoopMonitor:
    """Samples how late the event loop wakes a timer (its responsiveness)."""

    def __init__(self, telemetry: Telemetry, interval_s: float = LOOP_SAMPLE_S) -> None:
        self._telemetry = telemetry
        self._interval = interval_s
        self.last_beat = time.monotonic()
        self.lag_s = 0.0

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(self._interval)
            now = time.monotonic()
            self.lag_s = max(0.0, now - before - self._interval)
            self._telemetry.loop_lag_s = self.lag_s
            self.last_beat = now

    def stalled_for(self) -> float:
        """Seconds since the sampler last ran beyond its interval (0 when on time)."""
        return max(0.0, time.monotonic() - self.last_beat - self._interval)


class OpsEndpoint:
    """The ASGI app and the loop monitor behind it."""

    def __init__(self, telemetry: Telemetry, readiness: Readiness | None = None) -> None:
        """`readiness` decides `/readyz`; by default, the processors that `telemetry` observes."""
        self.telemetry = telemetry
        self._readiness = readiness or self._processor_readiness
        self.monitor = LoopMonitor(telemetry)
        self.app = Starlette(
            routes=[
                Route("/metrics", self._metrics, methods=["GET"]),
                Route("/healthz", self._healthz, methods=["GET"]),
                Route("/readyz", self._readyz, methods=["GET"]),
            ]
        )

    @contextlib.asynccontextmanager
    async def monitoring(self) -> AsyncIterator[OpsEndpoint]:
        """Run the loop monitor for the duration of the block."""
        task = asyncio.create_task(self.monitor.run(), name="loop-monitor")
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _metrics(self, request: Request) -> Response:
        return Response(self.telemetry.render_prometheus(), media_type=CONTENT_TYPE_LATEST)

    async def _healthz(self, request: Request) -> Response:
        stalled = self.monitor.stalled_for()
        body = {
            "status": "ok" if stalled < STALL_S else "stalled",
            "event_loop_lag_ms": round(self.monitor.lag_s * 1000, 3),
        }
        return JSONResponse(body, status_code=200 if stalled < STALL_S else 503)

    async def _readyz(self, request: Request) -> Response:
        reason = await self._readiness()
        if reason is not None:
            return JSONResponse(
                {"status": "not ready", "reason": reason[:MAX_REASON_CHARS]}, status_code=503
            )
        return JSONResponse({"status": "ready"})

    async def _processor_readiness(self) -> str | None:
        observed = self.telemetry.observed
        if not observed:
            failure = self.telemetry.last_failure
            return "processor not running" + (
                "" if failure is None else f"; restarting after: {failure[:MAX_FAILURE_CHARS]}"
            )
        for processor in observed:
            if processor.problem is not None:
                return processor.problem
        if not all(processor.ready for processor in observed):
            restoring = [stats for p in observed for stats in p.restores()]
            if not restoring:
                waiting = next(filter(None, (p.unassigned() for p in observed)), None)
                return waiting or "partitions not assigned or still restoring"
            named = ", ".join(map(_restoring, restoring[:MAX_RESTORES_NAMED]))
            more = len(restoring) - MAX_RESTORES_NAMED
            return f"partitions still restoring: {named}" + (
                f" and {more} more" if more > 0 else ""
            )
        reachable = await asyncio.gather(*(p.broker_reachable() for p in observed))
        if not all(reachable):
            return "Kafka cluster unreachable"
        return None


def _restoring(stats: RestoreStats) -> str:
    """One restore under way as `/readyz` names it: partition, time, how far it has come."""
    left = "" if stats.remaining is None else f", {stats.remaining} offsets to go"
    return f"{stats.partition} for {stats.seconds:.1f} s ({stats.records} records read{left})"
