"""`typing-processor run` as real processes: graceful stop, rebalance, crash and restore."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pipeline
import pytest
from pipeline import (
    Producer,
    RunProcess,
    eventually,
    now_ms,
    typing_event,
)

from processor.emulator.testing import EmulatorHandle

pytestmark = pytest.mark.slow


@pytest.fixture
def run_env(bootstrap_servers: str, emulator: EmulatorHandle) -> dict[str, str]:
    return pipeline.run_env(bootstrap_servers, emulator)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[RunProcess]]:
    started: list[RunProcess] = []
    yield started
    for process in started:
        process.kill()


def spawn(processes: list[RunProcess], env: dict[str, str], log: Path) -> RunProcess:
    process = RunProcess(env, log)
    process.start()
    processes.append(process)
    return process


def shown(emulator: EmulatorHandle, session_id: str) -> bool:
    return emulator.session(session_id)["customAttributes"].get("typingIndicator") is not None


async def test_sigterm_exits_zero_quickly(
    run_env: dict[str, str], processes: list[RunProcess], tmp_path: Path, emulator: EmulatorHandle
) -> None:
    emulator.create_session("g-1")
    first = spawn(processes, run_env, tmp_path / "a.log")
    async with Producer(run_env["KAFKA_BOOTSTRAP_SERVERS"], run_env["TYPING_INPUT_TOPIC"]) as p:
        await p.send(typing_event("g-1", timeout_ms=20_000))
        await eventually(lambda: shown(emulator, "g-1"), 60, "processor applied an event")
    started = now_ms()
    assert first.terminate(timeout_s=15) == 0, first.log_text()
    assert now_ms() - started < 10_000


async def test_sigkill_then_restart_clears_every_indicator(
    run_env: dict[str, str], processes: list[RunProcess], tmp_path: Path, emulator: EmulatorHandle
) -> None:
    sessions = [f"k-{i}" for i in range(12)]
    for session_id in sessions:
        emulator.create_session(session_id)
    first = spawn(processes, run_env, tmp_path / "first.log")
    async with Producer(run_env["KAFKA_BOOTSTRAP_SERVERS"], run_env["TYPING_INPUT_TOPIC"]) as p:
        deadline = 0
        for session_id in sessions:
            event = typing_event(session_id, timeout_ms=8_000)
            deadline = max(deadline, event["occurred_at"] + 8_000)
            await p.send(event)
        await eventually(
            lambda: all(shown(emulator, s) for s in sessions), 60, "every indicator set"
        )
    first.kill()  # SIGKILL: no flush, no commit, no leave-group
    spawn(processes, run_env, tmp_path / "second.log")
    await eventually(
        lambda: not any(shown(emulator, s) for s in sessions),
        60,
        "every indicator cleared by the restarted processor",
    )
    for session_id in sessions:
        history = emulator.history(session_id)
        assert history[-1]["typing_indicator"] is None
        # never cleared early: the deadline was respected across the crash
        assert history[-1]["at_ms"] >= history[0]["typing_indicator"]["expiresAt"]


async def test_two_processes_rebalance_without_losing_a_clear(
    run_env: dict[str, str], processes: list[RunProcess], tmp_path: Path, emulator: EmulatorHandle
) -> None:
    sessions = [f"r-{i}" for i in range(16)]
    for session_id in sessions:
        emulator.create_session(session_id)
    spawn(processes, run_env, tmp_path / "one.log")
    async with Producer(run_env["KAFKA_BOOTSTRAP_SERVERS"], run_env["TYPING_INPUT_TOPIC"]) as p:
        for session_id in sessions:
            await p.send(typing_event(session_id, timeout_ms=10_000))
        await eventually(
            lambda: all(shown(emulator, s) for s in sessions), 60, "every indicator set"
        )
        # a second member joins: partitions move while the indicators are set
        spawn(processes, run_env, tmp_path / "two.log")
        for session_id in sessions[:4]:
            await p.send(typing_event(session_id, "stopped"))
        await eventually(
            lambda: not any(shown(emulator, s) for s in sessions[:4]), 30, "stopped cleared"
        )
    await eventually(
        lambda: not any(shown(emulator, s) for s in sessions), 60, "every indicator cleared"
    )
    for session_id in sessions:
        history = emulator.history(session_id)
        clears = [h for h in history if h["typing_indicator"] is None]
        assert len(clears) == 1, history
