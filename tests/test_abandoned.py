"""Kafka work given up on is reported as one warning line, not as an error with a traceback."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError

from processor.runtime.abandoned import report_abandoned_kafka_work

Context = dict[str, Any]


@pytest.fixture
async def passed_on() -> AsyncIterator[list[Context]]:
    """Installs the reporting on this test's loop over a handler that records what it is
    passed; restores the loop's handler afterwards."""
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    seen: list[Context] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    report_abandoned_kafka_work(loop)
    yield seen
    loop.set_exception_handler(before)


async def _failed_unread(exc: BaseException) -> None:
    """A task that fails and whose exception nobody reads (as aiokafka's shielded commit
    after the commit that awaited it timed out), then collected."""

    async def fail() -> None:
        raise exc

    task = asyncio.get_running_loop().create_task(fail())
    await asyncio.wait({task})
    del task
    gc.collect()


async def test_a_late_kafka_failure_of_abandoned_work_is_one_warning(
    passed_on: list[Context], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        await _failed_unread(KafkaConnectionError("connection lost"))
    assert passed_on == []
    [record] = [r for r in caplog.records if r.name == "processor.runtime.abandoned"]
    assert record.levelno == logging.WARNING
    assert "failed later" in record.getMessage()
    assert "connection lost" in record.getMessage()


async def test_an_unclosed_kafka_client_is_one_warning(
    passed_on: list[Context], caplog: pytest.LogCaptureFixture
) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")  # never started or closed
    with caplog.at_level(logging.WARNING):
        del consumer
        gc.collect()
    assert passed_on == []
    [record] = [r for r in caplog.records if r.name == "processor.runtime.abandoned"]
    assert record.getMessage() == (
        "AIOKafkaConsumer left unclosed: the cluster did not answer in time"
    )


async def test_any_other_report_goes_where_it_went_before(passed_on: list[Context]) -> None:
    await _failed_unread(ValueError("a bug, not the cluster"))
    [context] = passed_on
    assert context["message"] == "Task exception was never retrieved"
    assert isinstance(context["exception"], ValueError)
