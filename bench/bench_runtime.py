"""End-to-end throughput of the processor, and Genesys calls per typing burst.

Part 1 (throughput): pre-produces typing traffic for many sessions into a fresh topic, then
in the same run measures (a) a bare aiokafka consumer that only reads the topic and (b) the
processor consuming it in its own group, deciding, reconciling with the emulator (a child
process, rate limit off) and publishing changelog, audit and CRM records. Reports both
rates and their ratio. The processor spends the default Genesys budget of one OAuth client
(`--rate`, calls per minute: what a replay of a backlog can spend in production); a large
`--rate` measures the call path too (every set the backlog asks for goes out).

Part 2 (economy): runs the real-time demo stack and counts Genesys calls per typing burst,
next to what the tutorial's approach would spend on the same traffic (GET + PATCH per
update it does not suppress, and GET + PATCH per expiry clear it schedules).

    python bench/bench_runtime.py [--sessions 10000] [--events-per-session 10] [--partitions 4]
                                  [--economy-sessions 40] [--economy-duration 20]
                                  [--rate CALLS_PER_MINUTE] [--profile PATH] [--skip-economy]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import secrets
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import SecretStr
from rich.console import Console

from processor.broker import LocalBroker
from processor.demo.runner import DemoOptions, run_demo
from processor.emulator.testing import EmulatorProcess
from processor.loadgen import LoadProfile, TrafficModel
from processor.runtime.kafka import TopicSpec, ensure_topics
from processor.runtime.service import TypingProcessor
from processor.settings import GenesysSettings, KafkaSettings, Settings, TypingSettings
from processor.sink.client import GenesysSink
from processor.sink.config import SinkConfig

TUTORIAL_WINDOW_MS = 1500
# One OAuth client's budget, as the processor ships (TYPING_API_RATE_PER_MINUTE).
DEFAULT_RATE = TypingSettings.model_fields["api_rate_per_minute"].default


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class RateAfterFirst:
    """Events per second from the first sample that saw any to the last sample.

    Timing starts at the first progress, not at start-up (group join and restore are not
    throughput); what the first sample saw is not counted, its time is the origin.
    """

    def __init__(self) -> None:
        self._first: tuple[float, int] | None = None
        self._last: tuple[float, int] | None = None

    def sample(self, count: int) -> None:
        """Record the running total `count` now."""
        if count <= 0:
            return
        point = (time.perf_counter(), count)
        if self._first is None:
            self._first = point
        self._last = point

    def per_second(self) -> float:
        """The rate; fails when the run was too short to have two distinct samples."""
        if self._first is None or self._last is None or self._last[1] == self._first[1]:
            raise SystemExit("too few events to measure a rate: raise --sessions")
        return (self._last[1] - self._first[1]) / (self._last[0] - self._first[0])


async def create_sessions(base_url: str, session_ids: list[str]) -> None:
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as admin:
        for start in range(0, len(session_ids), 200):
            chunk = session_ids[start : start + 200]
            answers = await asyncio.gather(
                *(
                    admin.post("/emulator/sessions", json={"session_id": s, "state": "connected"})
                    for s in chunk
                )
            )
            for answer in answers:
                answer.raise_for_status()


async def fill_topic(
    bootstrap: str, topic: str, sessions: list[str], per_session: int, *, traced: bool = False
) -> int:
    """Typing traffic: every other pair of rounds flips typing/paused, so half the events
    change state and half are suppressed repeats; long timeouts keep the backlog fresh (I5).
    `traced` gives each event a `traceparent` header of its own."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    sent = 0
    try:
        base = now_ms()
        pending = []
        for round_ in range(per_session):
            status = "typing" if (round_ // 2) % 2 == 0 else "paused"
            for i, session_id in enumerate(sessions):
                event = {
                    "event_id": f"{session_id}-{round_}",
                    "session_id": session_id,
                    "status": status,
                    "occurred_at": base + round_ * 10 + i % 10,
                    "timeout_ms": 60_000,
                }
                headers = None
                if traced:
                    parent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01".encode()
                    headers = [("traceparent", parent)]
                pending.append(
                    await producer.send(
                        topic, orjson.dumps(event), key=session_id.encode(), headers=headers
                    )
                )
                sent += 1
                if len(pending) >= 5_000:
                    await asyncio.gather(*pending)
                    pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def bare_consumer_rate(bootstrap: str, topic: str, expected: int) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen = 0
    rate = RateAfterFirst()
    try:
        while seen < expected:
            batch = await consumer.getmany(timeout_ms=500, max_records=2_000)
            seen += sum(len(records) for records in batch.values())
            rate.sample(seen)
    finally:
        await consumer.stop()
    return rate.per_second()


def settings_for(
    bootstrap: str,
    emulator: EmulatorProcess,
    topic: str,
    partitions: int,
    rate_per_minute: int = DEFAULT_RATE,
) -> Settings:
    """Processor settings for a benchmark run: fresh group and outbound topics, the given
    Genesys budget, defaults otherwise."""
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap),
        genesys=GenesysSettings(
            oauthclient_id=emulator.client_id,
            oauthclient_secret=SecretStr(emulator.client_secret),
            api_url=emulator.base_url,
            login_url=emulator.base_url,
        ),
        typing=TypingSettings(
            group_id=prefix,
            input_topic=topic,
            crm_topic=f"{prefix}.crm",
            audit_topic=f"{prefix}.audit",
            dlq_topic=f"{prefix}.dlq",
            topic_partitions=partitions,
            api_rate_per_minute=rate_per_minute,
        ),
    )


async def processor_rate(
    bootstrap: str,
    emulator: EmulatorProcess,
    topic: str,
    partitions: int,
    expected: int,
    profile: Path | None = None,
    rate_per_minute: int = DEFAULT_RATE,
) -> tuple[float, dict[str, object]]:
    """The processor's events per second over the topic; with `profile`, a cProfile
    summary of this phase (top functions by own and by cumulative time) is written there."""
    settings = settings_for(bootstrap, emulator, topic, partitions, rate_per_minute)
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    processor = TypingProcessor(settings, sink)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    profiler = cProfile.Profile() if profile is not None else None
    try:
        await processor.wait_ready()
        rate = RateAfterFirst()
        if profiler is not None:
            profiler.enable()
        while processor.counters.events < expected:
            if task.done():
                task.result()
            rate.sample(processor.counters.events)
            await asyncio.sleep(0.01)  # sampling a counter, not synchronising
        rate.sample(processor.counters.events)
    finally:
        if profiler is not None:
            profiler.disable()
        stop.set()
        await task
        await sink.aclose()
    if profiler is not None and profile is not None:
        out = io.StringIO()
        for order in ("tottime", "cumulative"):
            pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(30)
        await asyncio.to_thread(profile.write_text, out.getvalue())
    counters = {
        "decisions": dict(processor.counters.decisions),
        "calls": dict(processor.counters.calls),
        "changelog_records": processor.counters.changelog_records,
    }
    return rate.per_second(), counters


async def call_cpu_cost(emulator: EmulatorProcess, calls: int = 400) -> float:
    """CPU milliseconds this process spends per Genesys call (PATCH with a cached ETag)."""
    settings = settings_for("unused:9092", emulator, "unused", 1)
    session_ids = [f"cpu-{i}" for i in range(40)]
    await create_sessions(emulator.base_url, session_ids)
    async with GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing)) as sink:
        for session_id in session_ids:  # warm up: token, connections, ETags
            await sink.apply(session_id, None)
        started = time.process_time()
        for start in range(0, calls, len(session_ids)):
            await asyncio.gather(
                *(sink.apply(session_id, None) for session_id in session_ids[: calls - start])
            )
        spent = time.process_time() - started
    return spent * 1000 / calls


def tutorial_calls(events: list[dict[str, object]]) -> int:
    """What the tutorial's TypingIndicatorManager spends on the same events.

    It suppresses a (session, status) repeat within 1500 ms; every other update costs a
    GET and a PATCH, and schedules one expiry clear that costs another GET and PATCH.
    """
    last_sent: dict[tuple[str, str], int] = defaultdict(lambda: -(10**15))
    calls = 0
    for event in sorted(events, key=lambda e: int(str(e["occurred_at"]))):
        if event["status"] == "stopped":
            continue  # the tutorial has no stop: the indicator lingers until expiry
        key = (str(event["session_id"]), str(event["status"]))
        at = int(str(event["occurred_at"]))
        if at - last_sent[key] < TUTORIAL_WINDOW_MS:
            continue
        last_sent[key] = at
        calls += 4
    return calls


async def throughput(args: argparse.Namespace, console: Console) -> None:
    with LocalBroker() as broker, EmulatorProcess(client_id="bench", client_secret="bench") as emu:
        topic = f"bench-in-{uuid.uuid4().hex[:6]}"
        await ensure_topics(
            KafkaSettings(bootstrap_servers=broker.bootstrap_servers),
            [TopicSpec(topic)],
            args.partitions,
            1,
        )
        sessions = [f"b-{i:06d}" for i in range(args.sessions)]
        console.print(f"creating {len(sessions):,} sessions in the emulator")
        await create_sessions(emu.base_url, sessions)
        console.print("filling the input topic")
        total = await fill_topic(broker.bootstrap_servers, topic, sessions, args.events_per_session)
        console.print(f"{total:,} events in {topic} ({args.partitions} partitions)")
        bare = await bare_consumer_rate(broker.bootstrap_servers, topic, total)
        console.print(f"bare aiokafka consumer: {bare:,.0f} events/s")
        rate, counters = await processor_rate(
            broker.bootstrap_servers, emu, topic, args.partitions, total, args.profile, args.rate
        )
        console.print(f"processor (decide + reconcile + publish): {rate:,.0f} events/s")
        console.print(f"ratio processor / bare consumer: {rate / bare:.2f}")
        console.print(f"processor counters: {counters}")
        if args.profile is not None:
            console.print(f"profile of the processor phase: {args.profile}")
        cost = await call_cpu_cost(emu)
        console.print(f"CPU per Genesys call (this process): {cost:.2f} ms")


async def economy(args: argparse.Namespace, console: Console) -> None:
    options = DemoOptions(
        sessions=args.economy_sessions,
        duration_s=args.economy_duration,
        conflict_rate=0.0,
        error_rate=0.0,
    )
    result = await run_demo(options, Console(quiet=True))
    model = TrafficModel(
        LoadProfile(sessions=options.sessions, duration_s=options.duration_s, seed=options.seed)
    )
    events = [item.event.model_dump() for item in model.schedule(0).events]
    bursts = sum(1 for e in _bursts(events))
    ours = result.calls("GET") + result.calls("PATCH")
    theirs = tutorial_calls(events)
    console.print(f"typing bursts: {bursts:,}; events: {len(events):,}")
    console.print(f"processor: {ours:,} Genesys calls = {ours / bursts:.2f} per burst")
    console.print(f"tutorial approach: {theirs:,} calls = {theirs / bursts:.2f} per burst")


def _bursts(events: list[dict[str, object]]) -> list[tuple[str, int]]:
    """A burst starts with a typing event that follows a non-typing event (or none)."""
    starts: list[tuple[str, int]] = []
    previous: dict[str, object] = {}
    for event in sorted(events, key=lambda e: int(str(e["occurred_at"]))):
        sid = str(event["session_id"])
        if event["status"] == "typing" and previous.get(sid) != "typing":
            starts.append((sid, int(str(event["occurred_at"]))))
        previous[sid] = event["status"]
    return starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--events-per-session", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--economy-sessions", type=int, default=40)
    parser.add_argument("--economy-duration", type=float, default=20.0)
    parser.add_argument("--skip-economy", action="store_true")
    parser.add_argument("--rate", type=int, default=DEFAULT_RATE, help="Genesys calls/min to spend")
    parser.add_argument(
        "--profile", type=Path, default=None, help="write a cProfile summary of the processor phase"
    )
    args = parser.parse_args()
    console = Console()
    asyncio.run(throughput(args, console))
    if not args.skip_economy:
        asyncio.run(economy(args, console))


if __name__ == "__main__":
    main()
