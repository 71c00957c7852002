"""A group whose rebalance does not complete leaves `run` with no partitions: the processor
says so, in its log and in `/readyz`, and says when an assignment comes at last."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from pipeline import Monotonic, Skewed, blocking_member, eventually, make_settings

from processor.asgi import serve_in_background
from processor.emulator.testing import EmulatorHandle
from processor.runtime.assignment import (
    MEANING,
    UNASSIGNED_REPEAT_S,
    UNASSIGNED_WARN_S,
    AssignmentWait,
)
from processor.runtime.service import TypingProcessor
from processor.sink.client import GenesysSink
from processor.sink.config import SinkConfig
from processor.telemetry import OpsEndpoint, Telemetry

ASSIGNMENT_LOGGER = "processor.runtime.assignment"


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == ASSIGNMENT_LOGGER and r.levelno == level
    ]


async def test_a_rebalance_that_does_not_complete_is_warned_of_and_named_by_readyz(
    bootstrap_servers: str, emulator: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """Another member's revocation holds the group's rebalance (the processor's join waits
    for it): once that has lasted `UNASSIGNED_WARN_S` (the processor's clock moved ahead),
    one WARNING names the group, how long and what it means, and `/readyz` says the same;
    once the member rejoins, an INFO line says the partitions came, and the processor is
    ready. Nothing said so before: the client logs its join loop at DEBUG only."""
    caplog.set_level(logging.INFO, logger=ASSIGNMENT_LOGGER)
    settings = make_settings(bootstrap_servers, emulator)
    group = settings.typing.group_id
    clock = Skewed()
    telemetry = Telemetry.disabled()
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    processor = TypingProcessor(settings, sink, monotonic=clock, telemetry=telemetry)
    await processor.prepare_topics()
    ops = OpsEndpoint(telemetry)
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    topic = settings.typing.input_topic
    async with blocking_member(bootstrap_servers, group, topic) as blocking:
        try:
            task = asyncio.create_task(processor.run(stop))
            async with asyncio.timeout(60):
                await blocking.revoking.wait()
            # (the processor's join began that rebalance: it has subscribed, and waits since)
            clock.skew = UNASSIGNED_WARN_S
            await eventually(
                lambda: messages(caplog, logging.WARNING), 30, "a warning of the rebalance"
            )
            [warning] = messages(caplog, logging.WARNING)
            assert f"no partitions assigned in group {group} for " in warning
            assert MEANING in warning
            async with (
                serve_in_background(ops.app, port=0, name="ops") as listening,
                httpx.AsyncClient(base_url=listening.base_url, timeout=10) as client,
            ):
                answer = await client.get("/readyz")
                assert answer.status_code == 503
                reason = answer.json()["reason"]
                assert reason.startswith(f"no partitions assigned in group {group} for 6"), reason
                assert reason.endswith(MEANING), reason
                assert not processor.ready
                blocking.release.set()
                await eventually(lambda: processor.ready, 60, "the processor ready once it rejoins")
                [assigned] = messages(caplog, logging.INFO)
                assert assigned.startswith(f"partitions assigned in group {group} after 6"), (
                    assigned
                )
                assert len(messages(caplog, logging.WARNING)) == 1  # at most one a minute
                assert processor.unassigned() is None

                async def ready() -> bool:
                    return (await client.get("/readyz")).status_code == 200

                await eventually(ready, 30, "/readyz ready")
        finally:
            blocking.release.set()
            stop.set()
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
            await sink.aclose()


def test_a_long_wait_is_warned_of_once_a_minute_and_its_end_said_once_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The warning comes once the wait has lasted `UNASSIGNED_WARN_S`, again at most every
    `UNASSIGNED_REPEAT_S`; a revocation during a wait does not start it again; the
    assignment (an empty one too) ends it, with an INFO line only after a warning."""
    caplog.set_level(logging.INFO, logger=ASSIGNMENT_LOGGER)
    clock = Monotonic()
    wait = AssignmentWait("g", clock)
    assert wait.reason() is None
    wait.waiting()
    clock.now += 2.0
    wait.check()
    assert wait.reason() == "no partitions assigned yet: group g rebalancing for 2.0 s"
    wait.waiting()  # revoked again while the group forms: the wait goes on
    clock.now += UNASSIGNED_WARN_S - 2.0
    wait.check()
    clock.now += UNASSIGNED_REPEAT_S - 1.0
    wait.check()
    assert messages(caplog, logging.WARNING) == [
        f"no partitions assigned in group g for 60 s: {MEANING}"
    ]
    assert wait.reason() == f"no partitions assigned in group g for 119 s: {MEANING}"
    clock.now += 1.0
    wait.check()
    assert len(messages(caplog, logging.WARNING)) == 2
    wait.assigned()
    assert messages(caplog, logging.INFO) == [
        "partitions assigned in group g after 120 s without an assignment"
    ]
    assert wait.reason() is None
    wait.waiting()  # a rebalance that ends in time says nothing
    clock.now += 5.0
    wait.check()
    wait.assigned()
    assert len(messages(caplog, logging.WARNING)) == 2
    assert len(messages(caplog, logging.INFO)) == 1
    wait.waiting()  # the member leaves: nothing to wait for, nothing to say
    wait.stopped()
    clock.now += 2 * UNASSIGNED_WARN_S
    wait.check()
    assert wait.reason() is None
    assert len(messages(caplog, logging.WARNING)) == 2
