"""`typing-processor run` as real processes: graceful stop, rebalance, crash and restore."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pipeline
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pipeline import (
    UNREACHED_ENV,
    Producer,
    RunProcess,
    eventually,
    make_settings,
    now_ms,
    silent_listener,
    typing_event,
)

from processor.broker import LocalBroker
from processor.emulator.testing import EmulatorHandle
from processor.runtime.service import TypingProcessor
from processor.settings import Settings
from processor.sink.client import GenesysSink
from processor.sink.config import SinkConfig
from processor.state import PartitionStore

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


@pytest.mark.parametrize("silent_for", ["a moment", "a commit's timeout"])
async def test_sigterm_exits_zero_in_time_when_the_cluster_stops_answering(
    emulator: EmulatorHandle, processes: list[RunProcess], tmp_path: Path, silent_for: str
) -> None:
    """The broker hangs (here: SIGSTOPped) while the processor runs: draining cannot
    finish, and the processor gives it up rather than the 10 s SIGTERM allows; whether
    the stop comes at once or once its commits (every second, for the lease) time out."""
    with LocalBroker() as broker:
        env = pipeline.run_env(broker.bootstrap_servers, emulator)
        emulator.create_session("h-1")
        process = spawn(processes, env, tmp_path / "hung.log")
        async with Producer(broker.bootstrap_servers, env["TYPING_INPUT_TOPIC"]) as producer:
            await producer.send(typing_event("h-1", timeout_ms=20_000))
            await eventually(lambda: shown(emulator, "h-1"), 60, "processor applied an event")
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            if silent_for == "a commit's timeout":
                await eventually(
                    lambda: "commit failed" in process.log_text(), 30, "a commit timed out"
                )
            started = now_ms()
            assert process.terminate(timeout_s=15) == 0, process.log_text()
            assert now_ms() - started < 10_000, process.log_text()
            # what was given up on is a warning, not an error (the clients left unclosed)
            assert '"level":"ERROR"' not in process.log_text(), process.log_text()
        finally:
            os.kill(broker.pid, signal.SIGCONT)


async def test_sigterm_during_start_up_against_a_silent_cluster_exits_zero_at_once(
    emulator: EmulatorHandle, processes: list[RunProcess], tmp_path: Path
) -> None:
    """A bootstrap server that accepts connections and never answers: the processor is
    still starting when the SIGTERM comes, and leaves at once."""
    async with silent_listener() as (port, connected):
        env = pipeline.run_env(f"127.0.0.1:{port}", emulator)
        process = spawn(processes, env, tmp_path / "silent.log")
        await asyncio.wait_for(connected.wait(), 30)
        started = now_ms()
        assert process.terminate(timeout_s=15) == 0, process.log_text()
        assert now_ms() - started < 5_000, process.log_text()


# A stop signal sent to the child itself at the last step before its event loop runs
# (`configure_logging`), when no handler of the command's own is installed yet.
_SIGNALLED_IN_START_UP = """
import os, signal, sys
import processor.logs
from processor.cli import main

configure = processor.logs.configure_logging

def configure_then_signal(level):
    configure(level)
    os.kill(os.getpid(), getattr(signal, sys.argv[2]))

processor.logs.configure_logging = configure_then_signal
raise SystemExit(main([sys.argv[1]]))
"""


@pytest.mark.parametrize(
    ("command", "signal_name"),
    [("run", "SIGTERM"), ("run", "SIGINT"), ("crm-webhook", "SIGTERM")],
)
def test_a_stop_signal_before_the_handlers_are_installed_exits_zero(
    tmp_path: Path, command: str, signal_name: str
) -> None:
    """A SIGTERM during start-up must neither be lost where the command is PID 1 (run
    without the image's init, a signal left at its default is dropped, and the pod would
    be killed only at the end of its grace period) nor end the process without a clean
    exit. The stop comes before any broker is reached: the command leaves at once, exit 0."""
    env = {**os.environ, **UNREACHED_ENV, "OTEL_SDK_DISABLED": "true"}
    log = tmp_path / "early.log"
    with log.open("wb") as out:
        child = subprocess.run(
            [sys.executable, "-c", _SIGNALLED_IN_START_UP, command, signal_name],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            timeout=30,
            check=False,
        )
    text = log.read_text(errors="replace")
    assert child.returncode == 0, text
    assert "stopped cleanly" in text, text


async def test_sigkill_then_restart_clears_every_indicator(
    run_env: dict[str, str], processes: list[RunProcess], tmp_path: Path, emulator: EmulatorHandle
) -> None:
    sessions = [f"k-{i}" for i in range(12)]
    for session_id in sessions:
        emulator.create_session(session_id)
    # about the crash, not the budget: at 300/min the last of twelve sets, made while the
    # group forms, is rightly refused (the twelve clears due together could not be paid)
    run_env = {**run_env, "TYPING_API_RATE_PER_MINUTE": "6000"}
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


class LateInputProcessor(TypingProcessor):
    """Input reaches a partition only once the partition is restored and a planning round
    has seen it: a fetch that answers after the restore (a slow broker; fetches of other
    partitions ahead of it)."""

    def __init__(self, settings: Settings, sink: GenesysSink) -> None:
        super().__init__(settings, sink)
        self._restored_at: dict[int, int] = {}  # partition: planning rounds by its restore

    async def acquire(self, assigned: list[TopicPartition]) -> None:
        if self._consumer is not None:
            self._consumer.pause(*assigned)  # before any fetch of them
        await super().acquire(assigned)

    async def _restore(self, partition: int) -> PartitionStore:
        store = await super()._restore(partition)
        # the worker hands its store to the scheduler as this returns, with no await between
        self._restored_at[partition] = self.scheduler.rounds
        return store

    def _apply_backpressure(self, consumer: AIOKafkaConsumer) -> None:
        super()._apply_backpressure(consumer)
        for tp in consumer.assignment():
            restored_at = self._restored_at.get(tp.partition)
            if restored_at is None or self.scheduler.rounds <= restored_at:
                consumer.pause(tp)


async def test_a_restored_partition_sets_nothing_its_uncommitted_input_stopped(
    bootstrap_servers: str,
    run_env: dict[str, str],
    processes: list[RunProcess],
    tmp_path: Path,
    emulator: EmulatorHandle,
) -> None:
    """A processor is killed after showing agent typing; the `stopped` that follows is in
    the input topic, not processed nor committed. The indicator lapses while the partition
    has no owner (no "Off": it is shown until its duration ends), and the changelog still
    wants typing. The next owner restores, plans before its input arrives, and yet sends
    nothing: the replayed `stopped` ends what the changelog wanted (a set sent first would
    show typing that is over for up to its duration)."""
    conversation, communication = str(uuid.uuid4()), str(uuid.uuid4())
    emulator.create_conversation(conversation, [communication])
    target = {
        "kind": "agent_typing",
        "conversation_id": conversation,
        "communication_id": communication,
    }
    first = spawn(processes, run_env, tmp_path / "first.log")
    async with Producer(run_env["KAFKA_BOOTSTRAP_SERVERS"], run_env["TYPING_INPUT_TOPIC"]) as p:
        await p.send(typing_event("phantom", timeout_ms=60_000, target=target))
        await eventually(
            lambda: len(emulator.typing(conversation_id=conversation)) == 1, 60, "typing shown"
        )
        first.kill()  # SIGKILL: its group session must time out before the next owner starts
        await p.send(typing_event("phantom", "stopped", target=target))
    names = {
        name.removeprefix("TYPING_").lower(): value
        for name, value in run_env.items()
        if name in pipeline.topic_env("")
    }
    settings = make_settings(bootstrap_servers, emulator, **names)
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    processor = LateInputProcessor(settings, sink)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))

    def stopped_and_quiet() -> bool:
        for worker in list(processor.workers.values()):
            if not worker.restored.is_set():
                continue
            store = worker.store
            if store.session("phantom") is not None:
                return store.desired("phantom") is None and not store.in_flight
        return False

    try:
        await eventually(stopped_and_quiet, 60, "the stop replayed, no call out")
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await sink.aclose()
    calls = emulator.typing(conversation_id=conversation)
    assert len(calls) == 1, calls  # the first processor's, none since


async def test_two_processes_rebalance_without_losing_a_clear(
    run_env: dict[str, str], processes: list[RunProcess], tmp_path: Path, emulator: EmulatorHandle
) -> None:
    sessions = [f"r-{i}" for i in range(16)]
    for session_id in sessions:
        emulator.create_session(session_id)
    # about partitions moving, not the budget: every indicator may be set at once
    run_env = {**run_env, "TYPING_API_RATE_PER_MINUTE": "6000"}
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


async def test_two_replicas_share_one_budget_without_a_429(
    run_env: dict[str, str], processes: list[RunProcess], tmp_path: Path, emulator: EmulatorHandle
) -> None:
    """The service allows exactly the configured budget; two busy replicas stay within it."""
    rate = 120
    emulator.set_faults(rate_limit_per_minute=rate, rate_limit_burst=rate // 12)
    env = {**run_env, "TYPING_API_RATE_PER_MINUTE": str(rate)}
    sessions = [f"q-{i}" for i in range(40)]
    for session_id in sessions:
        emulator.create_session(session_id)
    one = spawn(processes, env, tmp_path / "one.log")
    two = spawn(processes, env, tmp_path / "two.log")
    await eventually(
        lambda: all("spending 2/4" in p.log_text() for p in (one, two)),
        60,
        "both replicas own two of the four partitions",
    )
    async with Producer(env["KAFKA_BOOTSTRAP_SERVERS"], env["TYPING_INPUT_TOPIC"]) as p:
        # far more wanted than the budget allows: every session types, stops, types again
        for round_number in range(12):
            for session_id in sessions:
                status = "stopped" if round_number % 3 == 2 else "typing"
                await p.send(typing_event(session_id, status, timeout_ms=3_000))
            await asyncio.sleep(1.0)  # pacing the traffic, not synchronisation
    await eventually(
        lambda: not any(shown(emulator, s) for s in sessions), 60, "every indicator cleared"
    )
    stats = emulator.stats()
    answered = {
        int(code): int(count)
        for route, statuses in stats["by_route"].items()
        if route.split(" ", 1)[-1].startswith("/api/")
        for code, count in statuses.items()
    }
    assert answered.get(429, 0) == 0, answered
    # and the budget was used, not left idle: well over a third of 120/min over the run
    assert sum(answered.values()) >= rate / 60 * 12 / 3
