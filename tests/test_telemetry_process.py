"""`typing-processor run` as a real process: its HTTP endpoint, its JSON log lines, and its
exit with an OTLP collector that never answers."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pipeline
import pytest
from pipeline import (
    Producer,
    RunProcess,
    announced_port,
    eventually,
    silent_listener,
    typing_event,
)

from processor.emulator.testing import EmulatorHandle

pytestmark = pytest.mark.slow


@pytest.fixture
def env(bootstrap_servers: str, emulator: EmulatorHandle) -> dict[str, str]:
    return pipeline.run_env(bootstrap_servers, emulator)


@pytest.fixture
def process(env: dict[str, str], tmp_path: Path) -> Iterator[RunProcess]:
    running = RunProcess(env, tmp_path / "run.log")
    running.start()
    try:
        yield running
    finally:
        running.kill()


def log_entries(process: RunProcess) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in process.log_text().splitlines() if line.strip()]


async def test_run_serves_probes_and_metrics_and_logs_json(
    process: RunProcess, env: dict[str, str], emulator: EmulatorHandle
) -> None:
    port = await announced_port(process)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        assert (await client.get("/healthz")).status_code == 200

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await eventually(ready, 60, "/readyz 200")
        emulator.create_session("p-metrics")
        async with Producer(env["KAFKA_BOOTSTRAP_SERVERS"], env["TYPING_INPUT_TOPIC"]) as p:
            await p.send(typing_event("p-metrics", timeout_ms=30_000))

        async def applied() -> bool:
            text = (await client.get("/metrics")).text
            return 'typing_events_total{decision="applied"' in text

        await eventually(applied, 30, "an applied decision on /metrics")
        text = (await client.get("/metrics")).text
        assert re.search(r'genesys_calls_total\{[^}]*method="PATCH"[^}]*status="200"', text)
        assert re.search(r"^typing_ready(\{[^}]*\})? 1\.0$", text, re.MULTILINE)

    assert process.terminate(timeout_s=15) == 0
    entries = log_entries(process)  # every line is one JSON object
    assert entries
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    text = process.log_text()
    assert emulator.client_secret not in text


async def test_sigterm_with_a_collector_that_never_answers_exits_zero_in_time(
    env: dict[str, str], emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """SIGTERM to exit 0 is 10 s (DESIGN §5), though each OTLP exporter would wait its whole
    timeout (10 s) for the last export."""
    async with silent_listener() as (port, connected):
        env = {
            **env,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # spans go out at once, to hang there
        }
        running = RunProcess(env, tmp_path / "run.log")
        running.start()
        try:
            await announced_port(running)
            emulator.create_session("p-otlp")
            async with Producer(env["KAFKA_BOOTSTRAP_SERVERS"], env["TYPING_INPUT_TOPIC"]) as p:
                await p.send(typing_event("p-otlp", timeout_ms=30_000))
            await asyncio.wait_for(connected.wait(), 60)  # an export is in flight, unanswered
            started = time.monotonic()
            assert running.terminate(timeout_s=15) == 0, running.log_text()
            assert time.monotonic() - started < 10.0, running.log_text()
        finally:
            running.kill()
    assert "telemetry export unfinished" in running.log_text()
