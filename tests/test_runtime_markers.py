"""Transaction markers in the input, on the real broker: the consumer passes over a
transaction's control batch without handing out a record, and the processor commits past
it all the same, so a partition that ends in one is committed to its end and reads no lag.

The local broker has no transactional producers; the marker is the control batch a
transaction coordinator writes, written as a plain produce request (see
`write_transaction_marker`)."""

from __future__ import annotations

import orjson
from pipeline import (
    Producer,
    committed,
    eventually,
    make_settings,
    start_in_process,
    typing_event,
    write_transaction_marker,
)

from processor.emulator.testing import EmulatorHandle
from processor.runtime.service import TypingProcessor
from processor.settings import Settings


async def committed_to(bootstrap: str, settings: Settings, end: int) -> None:
    """Wait until the group has committed partition 0 to `end`."""

    async def reached() -> bool:
        return await committed(bootstrap, settings, 0) == end

    await eventually(reached, 20, f"offset {end} committed")


def lags(processor: TypingProcessor) -> list[int | None]:
    return [stats.lag for stats in processor.partition_stats()]


async def test_input_that_ends_in_a_transaction_marker_is_committed_past_it(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    settings = make_settings(bootstrap_servers, emulator, topic_partitions=1)
    topic = settings.typing.input_topic
    emulator.create_session("s-marker")
    stack = await start_in_process(settings)
    try:
        async with Producer(bootstrap_servers, topic) as producer:
            event = typing_event("s-marker", timeout_ms=30_000)
            await producer.send_to(0, b"s-marker", orjson.dumps(event))
        marker = await write_transaction_marker(bootstrap_servers, topic, 0)
        await eventually(
            lambda: emulator.session("s-marker")["customAttributes"].get("typingIndicator"),
            20,
            "the record before the marker processed",
        )
        await committed_to(bootstrap_servers, settings, marker + 1)
        await eventually(lambda: lags(stack.processor) == [0], 10, "a lag of 0")
    finally:
        await stack.close()


async def test_a_partition_holding_only_a_marker_is_committed_past_it(
    bootstrap_servers: str, emulator: EmulatorHandle
) -> None:
    """Nothing is ever handed to the partition's worker: the consumer's position alone
    says the offsets before it hold nothing to process."""
    settings = make_settings(bootstrap_servers, emulator, topic_partitions=1)
    stack = await start_in_process(settings)
    try:
        marker = await write_transaction_marker(bootstrap_servers, settings.typing.input_topic, 0)
        await committed_to(bootstrap_servers, settings, marker + 1)
        await eventually(lambda: lags(stack.processor) == [0], 10, "a lag of 0")
    finally:
        await stack.close()
