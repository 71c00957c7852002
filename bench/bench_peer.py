"""Throughput against the framework users would otherwise pick, in one run on one broker.

The same pre-produced typing traffic (default 100,000 events of 10,000 sessions) is read by
three systems, one after the other, each in its own consumer group:

1. a bare aiokafka consumer that only reads (the ceiling);
2. a Quix Streams application doing the processor's per-event work (parse, per-session
   RocksDB state with a changelog, suppression within 1500 ms, one audit record per event,
   at-least-once): `bench/quix_peer_app.py`, as a child process;
3. the processor itself (decide, reconcile with the emulator, changelog, audit and CRM),
   spending the default budget of one OAuth client (`--rate` calls per minute).

Prints the three rates and the processor's ratio to each. Quix Streams is a bench-only
dependency: `pip install -e '.[bench]'`.

    python bench/bench_peer.py [--sessions 10000] [--events-per-session 10] [--partitions 4]
                               [--rate CALLS_PER_MINUTE] [--profile PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_runtime import (
    DEFAULT_RATE,
    RateAfterFirst,
    bare_consumer_rate,
    create_sessions,
    fill_topic,
    processor_rate,
)

from processor.broker import LocalBroker
from processor.emulator.testing import EmulatorProcess

QUIX_APP = Path(__file__).resolve().parent / "quix_peer_app.py"
QUIX_TIMEOUT_S = 600.0


async def create_topics(bootstrap: str, topics: list[str], partitions: int) -> None:
    """Topics with an explicit `retention.ms`: Quix Streams derives its changelog topic's
    configuration from the input's, and the local broker describes only given configs. The
    peer's audit topic is made here too, so its partitions are known before it writes."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    name=topic,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs={"retention.ms": str(7 * 24 * 3600 * 1000)},
                )
                for topic in topics
            ]
        )
    finally:
        await admin.close()


async def quix_rate(bootstrap: str, topic: str, partitions: int, expected: int) -> float:
    """Events per second of the Quix Streams peer, from its audit records as they arrive.

    The records are read, not counted from end offsets: the local broker's high watermark
    lags records written in batches (it can stay at a batch's first offset).
    """
    audit_topic = audit_topic_of(topic)
    group = f"quix-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as state_dir:
        child = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, polled below
            [sys.executable, str(QUIX_APP), bootstrap, topic, audit_topic, group, state_dir],
            stdin=subprocess.DEVNULL,
        )
        reader = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await reader.start()
        reader.assign([TopicPartition(audit_topic, p) for p in range(partitions)])
        rate = RateAfterFirst()
        done = 0
        try:
            async with asyncio.timeout(QUIX_TIMEOUT_S):
                while done < expected:
                    if child.poll() is not None:
                        raise SystemExit(f"the Quix Streams app exited ({child.returncode})")
                    batch = await reader.getmany(timeout_ms=200, max_records=5_000)
                    done += sum(len(records) for records in batch.values())
                    rate.sample(done)
        finally:
            await reader.stop()
            child.terminate()
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return rate.per_second()


def audit_topic_of(topic: str) -> str:
    return f"{topic}-quix-audit"


async def main(args: argparse.Namespace) -> None:
    console = Console()
    with LocalBroker() as broker, EmulatorProcess(client_id="bench", client_secret="bench") as emu:
        bootstrap = broker.bootstrap_servers
        topic = f"peer-in-{uuid.uuid4().hex[:6]}"
        await create_topics(bootstrap, [topic, audit_topic_of(topic)], args.partitions)
        sessions = [f"p-{i:06d}" for i in range(args.sessions)]
        console.print(f"creating {len(sessions):,} sessions in the emulator")
        await create_sessions(emu.base_url, sessions)
        total = await fill_topic(bootstrap, topic, sessions, args.events_per_session)
        console.print(f"{total:,} events in {topic} ({args.partitions} partitions)")
        bare = await bare_consumer_rate(bootstrap, topic, total)
        console.print(f"bare aiokafka consumer:   {bare:>10,.0f} events/s")
        quix = await quix_rate(bootstrap, topic, args.partitions, total)
        console.print(f"Quix Streams peer:        {quix:>10,.0f} events/s")
        processor, counters = await processor_rate(
            bootstrap,
            emu,
            topic,
            args.partitions,
            total,
            profile=args.profile,
            rate_per_minute=args.rate,
        )
        console.print(f"this processor:           {processor:>10,.0f} events/s")
        console.print(f"processor / Quix Streams: {processor / quix:>10.2f}")
        console.print(f"processor / bare:         {processor / bare:>10.2f}")
        console.print(f"processor counters: {counters}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--events-per-session", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--profile", type=Path, default=None, help="cProfile summary of phase 3")
    parser.add_argument("--rate", type=int, default=DEFAULT_RATE, help="Genesys calls/min to spend")
    asyncio.run(main(parser.parse_args()))
