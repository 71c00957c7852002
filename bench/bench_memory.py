"""Memory of `typing-processor run` by the number of sessions it tracks: what to request.

For each size N: a fresh local broker and emulator with N connected sessions, the processor
as its own process (the shipped command, its Genesys budget lifted so that every set goes
out), its resident memory once idle, then one `typing` event per session (60 s timeout, so
every session stays tracked) sent at once, as a backlog arrives after an outage. When the
processor has decided on all N (its `/metrics`), the process's peak resident memory
(`VmHWM`) is read: every session is tracked then, its indicator set or its set waiting for
the call. The baseline is the same process idle, in the same run: bytes per session =
(peak - idle) / N.

    python bench/bench_memory.py [--sessions 10000,30000,60000]

Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from processor.broker import LocalBroker
from processor.emulator.testing import EmulatorProcess
from processor.settings import TypingSettings

INPUT_TOPIC = TypingSettings.model_fields["input_topic"].default


def memory_mib(pid: int) -> dict[str, float]:
    """Resident (`VmRSS`) and peak resident (`VmHWM`) memory of a process, in MiB."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) / 1024
    return found


async def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition()` until true; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"not within {timeout_s:.0f} s: {what}")
        await asyncio.sleep(0.5)


async def measure(sessions: int) -> dict[str, float]:
    """Idle and peak memory of the processor tracking `sessions` sessions."""
    with (
        LocalBroker() as broker,
        EmulatorProcess(extra_args=("--rate-limit-per-minute", "0")) as emu,
    ):
        ids = [f"mem-{i:07d}" for i in range(sessions)]
        async with httpx.AsyncClient(base_url=emu.base_url, timeout=30) as http:
            limit = asyncio.Semaphore(64)

            async def create(session_id: str) -> None:
                async with limit:
                    body = {"session_id": session_id, "state": "connected"}
                    (await http.post("/emulator/sessions", json=body)).raise_for_status()

            await asyncio.gather(*(create(s) for s in ids))
        port = _free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "GENESYSCLOUD_OAUTHCLIENT_ID": emu.client_id,
            "GENESYSCLOUD_OAUTHCLIENT_SECRET": emu.client_secret,
            "GENESYSCLOUD_API_URL": emu.base_url,
            "GENESYSCLOUD_LOGIN_URL": emu.base_url,
            "TYPING_API_RATE_PER_MINUTE": "1000000",
            "TYPING_LOG_LEVEL": "WARNING",
            "TYPING_HTTP_PORT": str(port),
        }
        process = _start_processor(env)
        try:
            await wait_for(lambda: _ready(port), 60, "the processor ready")
            await asyncio.sleep(5)  # idle: joined, restored, nothing to do
            idle = memory_mib(process.pid)["VmRSS"]
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=20)
            await producer.start()
            try:
                now = time.time_ns() // 1_000_000
                for n, session_id in enumerate(ids):
                    event = {
                        "event_id": f"mem-{n}",
                        "session_id": session_id,
                        "status": "typing",
                        "occurred_at": now,
                        "timeout_ms": 60_000,
                    }
                    await producer.send(INPUT_TOPIC, orjson.dumps(event), key=session_id.encode())
                await producer.flush()
            finally:
                await producer.stop()
            await wait_for(lambda: _events_decided(port) >= sessions, 300, "every event decided")
            peak = memory_mib(process.pid)["VmHWM"]
        finally:
            process.terminate()
            process.wait(20)
    return {"sessions": sessions, "idle": idle, "peak": peak}


def _start_processor(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`typing-processor run` as it ships, in its own process."""
    return subprocess.Popen([sys.executable, "-m", "processor", "run"], env=env)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _events_decided(port: int) -> float:
    """Events the processor has decided on so far, from its `/metrics`."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("typing_events_total{")
    )


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="10000,30000,60000")
    args = parser.parse_args()
    rows = [asyncio.run(measure(int(n))) for n in args.sessions.split(",")]
    table = Table(title="typing-processor run: resident memory by sessions tracked")
    for column in ("sessions", "idle RSS", "peak RSS", "per session (peak - idle)"):
        table.add_column(column, justify="right")
    for row in rows:
        per_session = (row["peak"] - row["idle"]) * 1024 * 1024 / row["sessions"]
        table.add_row(
            f"{row['sessions']:,.0f}",
            f"{row['idle']:.0f} MiB",
            f"{row['peak']:.0f} MiB",
            f"{per_session / 1024:.1f} KiB",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
