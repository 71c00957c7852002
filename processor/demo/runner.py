"""The embedded stack: local broker, Genesys emulator, synthetic traffic, the processor.

Everything runs on loopback in this process (the broker as a child process); nothing is
left behind when the demo ends, however it ends.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from processor.broker import LocalBroker
from processor.clock import SystemClock
from processor.emulator.config import EmulatorConfig
from processor.emulator.faults import Faults
from processor.emulator.server import serve_in_background
from processor.loadgen import LoadProfile, TrafficModel, expected_intervals, produce
from processor.runtime.service import TypingProcessor
from processor.settings import GenesysSettings, KafkaSettings, Settings, TypingSettings
from processor.sink.client import GenesysSink
from processor.sink.config import SinkConfig

from .report import Accuracy, accuracy

DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret"  # noqa: S105 - a local, throwaway emulator credential


class DemoError(Exception):
    """The demo stack did not come up or did not settle."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What the demo runs."""

    sessions: int = 40
    duration_s: float = 20.0
    seed: int = 7
    partitions: int = 4
    api_rate_per_minute: int = 6000
    latency_ms: float = 15.0
    jitter_ms: float = 25.0
    conflict_rate: float = 0.02
    error_rate: float = 0.01


@dataclass(slots=True)
class DemoResult:
    """What the demo measured."""

    events: int
    counters: dict[str, Any]
    stats: dict[str, Any]
    accuracy: Accuracy
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def calls(self, method: str, status: int | None = None) -> int:
        """Emulator API calls by method on the session route (optionally by status)."""
        total = 0
        for route, statuses in self.stats.get("by_route", {}).items():
            verb, _, path = route.partition(" ")
            if verb != method or not path.startswith("/api/v2/webchat/sessions"):
                continue
            for code, count in statuses.items():
                if status is None or int(code) == status:
                    total += int(count)
        return total

    def status_count(self, status: int) -> int:
        """API calls of any method answered with `status`."""
        return sum(
            int(count)
            for route, statuses in self.stats.get("by_route", {}).items()
            if route.split(" ", 1)[-1].startswith("/api/")
            for code, count in statuses.items()
            if int(code) == status
        )


def _settings(bootstrap: str, base_url: str, options: DemoOptions) -> Settings:
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap),
        genesys=GenesysSettings(
            oauthclient_id=DEMO_CLIENT_ID,
            oauthclient_secret=SecretStr(DEMO_CLIENT_SECRET),
            api_url=base_url,
            login_url=base_url,
        ),
        typing=TypingSettings(
            group_id=f"demo-{uuid.uuid4().hex[:8]}",
            topic_partitions=options.partitions,
            api_rate_per_minute=options.api_rate_per_minute,
            audit_log_file=None,
        ),
    )


async def run_demo(options: DemoOptions, console: Console) -> DemoResult:
    """Run the whole stack once and measure it."""
    console.print("[bold]starting[/] local broker (Tansu) and Genesys emulator")
    broker = LocalBroker()
    broker.start()
    try:
        faults = Faults(
            latency_ms=options.latency_ms,
            jitter_ms=options.jitter_ms,
            conflict_rate=options.conflict_rate,
            error_rate=options.error_rate,
            rate_limit_per_minute=options.api_rate_per_minute,
            rate_limit_burst=max(1, options.api_rate_per_minute // 12),
            seed=options.seed,
        )
        config = EmulatorConfig.single_client(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, faults)
        async with serve_in_background(config) as emulator:
            return await _run_stack(options, console, broker, emulator.base_url)
    finally:
        broker.stop()


async def _run_stack(
    options: DemoOptions, console: Console, broker: LocalBroker, base_url: str
) -> DemoResult:
    settings = _settings(broker.bootstrap_servers, base_url, options)
    model = TrafficModel(
        LoadProfile(sessions=options.sessions, duration_s=options.duration_s, seed=options.seed)
    )
    clock = SystemClock()
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as admin:
        for session_id in model.session_ids():
            response = await admin.post(
                "/emulator/sessions", json={"session_id": session_id, "state": "connected"}
            )
            response.raise_for_status()
        console.print(f"created {options.sessions} connected sessions in the emulator")

        sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
        processor = TypingProcessor(settings, sink, clock=clock)
        stop = asyncio.Event()
        task = asyncio.create_task(processor.run(stop), name="processor")
        try:
            ready = asyncio.ensure_future(processor.wait_ready())
            await asyncio.wait({ready, task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if task.done():
                task.result()
            if not processor.ready:
                raise DemoError("the processor was not assigned its partitions within 60 s")
            console.print(
                f"processor ready: group {settings.typing.group_id},"
                f" {len(processor.workers)} partitions restored"
            )
            start_ms = clock.now_ms() + 200
            schedule = model.schedule(start_ms)
            await _send_traffic(settings, schedule, clock, start_ms, console)
            truth = expected_intervals(
                [item.event for item in schedule.events], settings.typing.timeout_matrix
            )
            last_deadline = max((iv[-1][1] for iv in truth.values() if iv), default=start_ms)
            histories: dict[str, list[dict[str, Any]]] = {}

            async def all_clear() -> bool:
                histories.clear()
                for session_id in model.session_ids():
                    got = await admin.get(f"/emulator/sessions/{session_id}/history")
                    got.raise_for_status()
                    histories[session_id] = got.json()["history"]
                return all(not h or h[-1]["typing_indicator"] is None for h in histories.values())

            console.print("traffic sent; waiting for every indicator to be cleared")
            settle_until = last_deadline + 15_000
            while not await all_clear():
                if clock.now_ms() > settle_until:
                    raise DemoError("indicators were still set 15 s after the last deadline")
                await asyncio.sleep(0.25)
            end_ms = clock.now_ms()
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await sink.aclose()
        task.result()
        stats = (await admin.get("/emulator/stats")).json()
    counters = {
        "events": processor.counters.events,
        "dead_letters": processor.counters.dead_letters,
        "crm_records": processor.counters.crm_records,
        "audit_records": processor.counters.audit_records,
        "changelog_records": processor.counters.changelog_records,
        "decisions": dict(processor.counters.decisions),
        "calls": dict(processor.counters.calls),
    }
    return DemoResult(
        events=len(schedule.events),
        counters=counters,
        stats=stats,
        accuracy=accuracy(truth, histories, end_ms),
        history=histories,
    )


async def _send_traffic(
    settings: Settings, schedule: Any, clock: SystemClock, start_ms: int, console: Console
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, linger_ms=2)
    await producer.start()
    try:
        with Progress(
            TextColumn("[bold]typing traffic"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("events"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("traffic", total=len(schedule.events))
            await produce(
                producer,
                settings.typing.input_topic,
                schedule,
                clock,
                start_ms=start_ms,
                on_sent=lambda n: progress.update(bar, completed=n),
            )
    finally:
        await producer.stop()
