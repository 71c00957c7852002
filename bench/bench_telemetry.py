"""Processor throughput with telemetry on versus off, in the same run.

One local broker and one emulator (a child process, rate limit off) serve every round.
Each round fills a fresh input topic with the same traffic shape (every event carries a
`traceparent`, as from an instrumented producer), then runs the processor over it in its
own consumer group until every event has its audit decision:

- off:    `Telemetry.disabled()` (what tests and embedders get by default);
- on:     what `run` does with no OTLP endpoint configured: a span per event, Genesys
          call and publish spans, W3C context into CRM/audit headers, `trace_id` in audits,
          every metric, `/metrics` served and scraped once a second;
- export: "on" plus every span through a `BatchSpanProcessor` to an exporter that encodes
          it as OTLP protobuf (the CPU an OTLP/HTTP export costs, without a collector).

Modes rotate from round to round so drift affects all alike; each ratio is a mode's
median rate over the median "off" rate.

    python bench/bench_telemetry.py [--sessions 2000] [--events-per-session 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import httpx
from bench_runtime import create_sessions, fill_topic, settings_for
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from processor.asgi import serve_in_background
from processor.broker import LocalBroker
from processor.emulator.testing import EmulatorProcess
from processor.runtime.kafka import TopicSpec, ensure_topics
from processor.runtime.service import TypingProcessor
from processor.settings import KafkaSettings, Settings
from processor.sink.client import GenesysSink
from processor.sink.config import SinkConfig
from processor.telemetry import OpsEndpoint, Telemetry


class EncodingExporter(SpanExporter):
    """Encodes spans as an OTLP export request would, then drops them."""

    def __init__(self) -> None:
        self.spans = 0
        self.bytes = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.bytes += len(encode_spans(spans).SerializeToString())
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _scrape_forever(url: str, stop: threading.Event, sizes: list[int]) -> None:
    with httpx.Client(timeout=10) as client:
        while not stop.wait(1.0):
            sizes.append(len(client.get(url).content))


@dataclass(frozen=True)
class Rate:
    """Events per wall-clock second, and per CPU second of this process (all threads:
    the processor's loop and the span exporter; the broker and emulator are other
    processes). On a shared machine the CPU figure is the steadier of the two."""

    wall: float
    cpu: float


async def measure(settings: Settings, telemetry: Telemetry, expected: int) -> Rate:
    """Events per second from the first event processed to the last one decided."""
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    telemetry.instrument_sink(sink)
    processor = TypingProcessor(settings, sink, telemetry=telemetry)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    counters = processor.counters
    try:
        await processor.wait_ready()
        started = None
        cpu_started = 0.0
        deadline = time.monotonic() + 300
        # every event ends in exactly one decision (applied, suppressed, coalesced, ...)
        while counters.events < expected or sum(counters.decisions.values()) < expected:
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {counters.events} events decided in 300 s")
            if started is None and counters.events:
                started = time.perf_counter()
                cpu_started = time.process_time()
            await asyncio.sleep(0.005)  # sampling a counter, not synchronising
        elapsed = time.perf_counter() - (started or time.perf_counter())
        cpu = time.process_time() - cpu_started
    finally:
        stop.set()
        await task
        await sink.aclose()
    return Rate(expected / elapsed, expected / cpu)


async def round_on(settings: Settings, expected: int, exporter: EncodingExporter | None) -> Rate:
    processors = [] if exporter is None else [BatchSpanProcessor(exporter, max_queue_size=65_536)]
    telemetry = Telemetry.from_environment({}, span_processors=processors)
    ops = OpsEndpoint(telemetry)
    scraping = threading.Event()
    sizes: list[int] = []
    try:
        async with ops.monitoring(), serve_in_background(ops.app, port=0) as listening:
            scraper = threading.Thread(
                target=_scrape_forever, args=(f"{listening.base_url}/metrics", scraping, sizes)
            )
            scraper.start()
            try:
                return await measure(settings, telemetry, expected)
            finally:
                scraping.set()
                await asyncio.to_thread(scraper.join)
    finally:
        telemetry.shutdown()
        exported = "" if exporter is None else f"{exporter.spans:,} spans exported so far; "
        print(f"    {exported}{len(sizes)} scrapes of /metrics")


async def main_async(args: argparse.Namespace) -> None:
    with LocalBroker() as broker, EmulatorProcess(client_id="bench", client_secret="bench") as emu:
        bootstrap = broker.bootstrap_servers
        sessions = [f"t-{i:06d}" for i in range(args.sessions)]
        print(f"creating {len(sessions):,} sessions in the emulator")
        await create_sessions(emu.base_url, sessions)
        modes: list[Literal["off", "on", "export"]] = ["off", "on", "export"]
        rates: dict[str, list[Rate]] = {mode: [] for mode in modes}
        exporter = EncodingExporter()
        for round_ in range(args.rounds):
            for mode in modes[round_ % 3 :] + modes[: round_ % 3]:
                topic = f"bench-tel-{uuid.uuid4().hex[:6]}"
                kafka = KafkaSettings(bootstrap_servers=bootstrap)
                await ensure_topics(kafka, [TopicSpec(topic)], args.partitions, 1)
                total = await fill_topic(
                    bootstrap, topic, sessions, args.events_per_session, traced=True
                )
                settings = settings_for(bootstrap, emu, topic, args.partitions)
                if mode == "off":
                    rate = await measure(settings, Telemetry.disabled(), total)
                else:
                    chosen = exporter if mode == "export" else None
                    rate = await round_on(settings, total, chosen)
                rates[mode].append(rate)
                print(
                    f"round {round_ + 1} telemetry {mode:>6}: {rate.wall:8,.0f} events/s"
                    f"  {rate.cpu:8,.0f} events/CPU-s"
                )
        off_wall = statistics.median(r.wall for r in rates["off"])
        off_cpu = statistics.median(r.cpu for r in rates["off"])
        for mode in modes:
            wall = statistics.median(r.wall for r in rates[mode])
            cpu = statistics.median(r.cpu for r in rates[mode])
            print(
                f"median {mode:>6}: {wall:8,.0f} events/s (ratio {wall / off_wall:.3f})"
                f"  {cpu:8,.0f} events/CPU-s (ratio {cpu / off_cpu:.3f})"
            )
        print("target: ratio >= 0.85")
        print(f"spans exported: {exporter.spans:,} ({exporter.bytes / 1e6:.1f} MB of OTLP)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2_000)
    parser.add_argument("--events-per-session", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
