"""The synthetic traffic model: deterministic, and participants that type differently."""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import sys
from collections.abc import Iterator
from dataclasses import replace

import pytest
from aiokafka import AIOKafkaProducer
from pipeline import eventually, read_topic, unique_prefix

from processor.broker import LocalBroker
from processor.cli import build_parser
from processor.clock import ManualClock
from processor.domain import Role, Status
from processor.loadgen import TYPIST_MIXES, LoadProfile, TrafficModel, TypistMix, produce
from processor.models import TypingEvent

T0 = 1_700_000_000_000


def _burst_lengths(mix: TypistMix) -> dict[Role, list[int]]:
    """Length of every run of `typing` events (first to last keystroke), by role."""
    spread, agent_scale = TYPIST_MIXES[mix]
    profile = LoadProfile(
        sessions=300, duration_s=120, seed=11, typist_spread=spread, agent_burst_scale=agent_scale
    )
    runs: dict[Role, list[int]] = {role: [] for role in Role}
    open_runs: dict[str, tuple[int, int]] = {}
    for item in TrafficModel(profile).schedule(T0).events:
        event = item.event
        assert event.participant is not None
        if event.status is Status.TYPING:
            first, _ = open_runs.get(event.session_id, (event.occurred_at, 0))
            open_runs[event.session_id] = (first, event.occurred_at)
        elif event.session_id in open_runs:
            first, last = open_runs.pop(event.session_id)
            runs[event.participant.role].append(last - first)
    return runs


def test_the_same_seed_gives_the_same_schedule() -> None:
    profile = LoadProfile(sessions=20, duration_s=10, typist_spread=(0.3, 3.0))
    first = TrafficModel(profile).schedule(T0).events
    assert first == TrafficModel(profile).schedule(T0).events
    assert len(first) > 100


def test_uniform_typists_type_alike_and_agents_long_type_four_times_as_long() -> None:
    uniform = _burst_lengths("uniform")
    ratio = statistics.mean(uniform[Role.AGENT]) / statistics.mean(uniform[Role.CUSTOMER])
    assert 0.8 < ratio < 1.25
    agents_long = _burst_lengths("agents-long")
    ratio = statistics.mean(agents_long[Role.AGENT]) / statistics.mean(agents_long[Role.CUSTOMER])
    assert 2.5 < ratio < 6


def test_varied_typists_each_keep_their_own_pace() -> None:
    spread, _ = TYPIST_MIXES["varied"]
    model = TrafficModel(LoadProfile(sessions=50, typist_spread=spread))
    scales = [model.typist_scale(sid, Role.CUSTOMER) for sid in model.session_ids()]
    assert all(spread[0] <= scale <= spread[1] for scale in scales)
    assert max(scales) / min(scales) > 3
    assert scales == [model.typist_scale(sid, Role.CUSTOMER) for sid in model.session_ids()]


@pytest.mark.parametrize("command", ["demo", "loadgen"])
def test_every_typist_mix_is_offered_on_the_command_line(command: str) -> None:
    parser = build_parser()
    for mix in TYPIST_MIXES:
        args = parser.parse_args([command, "--typists", mix])
        assert args.typists == mix
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--typists", "telepathic"])


def test_event_ids_are_unique_across_runs_and_seeds() -> None:
    """The processor drops an event id it has seen (at-least-once input): a second run,
    or a run with another seed, must not repeat the ids of an earlier one."""
    profile = LoadProfile(sessions=5, duration_s=5)

    def ids(model: TrafficModel, start_ms: int) -> list[str]:
        return [item.event.event_id for item in model.schedule(start_ms).events]

    first = ids(TrafficModel(profile), T0)
    assert len(set(first)) == len(first)
    later_run = ids(TrafficModel(profile), T0 + 60_000)
    other_seed = ids(TrafficModel(replace(profile, seed=profile.seed + 1)), T0)
    assert set(first).isdisjoint(later_run)
    assert set(first).isdisjoint(other_seed)
    # and each one is an event the processor's codec accepts
    for item in TrafficModel(profile).schedule(T0).events:
        assert TypingEvent.model_validate_json(item.event.to_bytes()) == item.event


async def test_the_rate_cap_holds_after_a_stall(bootstrap_servers: str) -> None:
    """A stall (the event loop blocked, the producer's buffer full) must not be made up by
    sending the slots it missed at once: the cap is a limit, not an average."""
    clock = ManualClock(T0)
    rate = 20  # events/s: one every 50 ms
    profile = LoadProfile(sessions=20, duration_s=6)
    schedule = TrafficModel(profile).schedule(T0)
    sent_at: list[int] = []

    async def follow_the_clock(seconds: float) -> None:
        clock.advance(round(seconds * 1000))
        await asyncio.sleep(0)

    def on_sent(count: int) -> None:
        sent_at.append(clock.now_ms())
        if count == 10:
            clock.advance(3_000)  # everything stalls for 3 s after the tenth send

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        sent = await produce(
            producer,
            f"{unique_prefix()}.events",
            schedule,
            clock,
            start_ms=T0,
            max_rate=rate,
            on_sent=on_sent,
            sleep=follow_the_clock,
        )
    finally:
        await producer.stop()
    # more than the cap lets through in the profile's duration: the cap binds throughout
    assert sent == len(schedule.events) > rate * profile.duration_s
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent_at)]
    assert max(gaps) >= 3_000  # the stall happened
    assert min(gaps) >= 1000 / rate, gaps


@pytest.fixture
def own_broker() -> Iterator[LocalBroker]:
    """A broker of this test's own, which it may stop."""
    with LocalBroker() as running:
        yield running


@pytest.mark.slow
async def test_a_broker_lost_mid_run_ends_loadgen_with_one_line(own_broker: LocalBroker) -> None:
    """Exit 1 and one line saying how many events the broker acknowledged: no traceback,
    no client log flood, and no "sent" for events that were not."""
    topic = f"{unique_prefix()}.events"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": own_broker.bootstrap_servers,
        "TYPING_INPUT_TOPIC": topic,
    }
    argv = ["loadgen", "--sessions", "20", "--duration", "120"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "processor",
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def some_landed() -> bool:
            return len(await read_topic(own_broker.bootstrap_servers, topic)) > 0

        await eventually(some_landed, 60, "loadgen's first events on the topic", 0.5)
        own_broker.stop()
        # the client's request timeout (40 s) passes before a send is known to have failed
        async with asyncio.timeout(150):
            out_bytes, err_bytes = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    out, err = out_bytes.decode(), err_bytes.decode()
    assert process.returncode == 1, err
    assert "Traceback" not in err, err
    assert "sent" not in out
    [line] = err.strip().splitlines()
    assert "the broker stopped taking events" in line
    assert "it had acknowledged" in line
