"""Records the Kafka client cannot decode: found by their position and stepped past.

aiokafka decodes a record batch as it hands records out. A record it cannot decode (a
header key not in UTF-8, which a foreign producer can write; a batch whose CRC does not
match, which the broker kept as written) raises inside `getmany`, before any codec of ours
sees it, and again at every fetch of its batch and after every restart: left alone, it
stops a consumer for good. The fetch that raised may also have moved other partitions'
positions past records it never returned.

`fetch_past_undecodable` takes one partition back to the first record its consumer has not
handed on, fetches it on its own, and steps a record at a time through a round that
raises, to the culprit. The client reads a batch in one go, so the records after the
culprit in its batch cannot be read either: each comes out as `Undecodable` (a position
and why), every other record in order, until a record can be read again. If the culprit
lies beyond one round's records, the consumer's next fetch raises again, one round on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CorruptRecordException, KafkaError

PROBE_RECORDS = 500
"""Records fetched from a partition in one round of the search."""
PROBE_WAIT_MS = 500
"""How long a partition with nothing new is waited for."""


@dataclass(frozen=True, slots=True)
class Undecodable:
    """The record at `offset` could not be read: `detail` says why."""

    offset: int
    detail: str


def is_undecodable(failure: BaseException) -> bool:
    """Whether a failed fetch points at a record that cannot be read: any exception but
    Kafka's own errors, and of those a batch that fails its CRC (once the search fetches
    it again and it fails again, it is no accident of the network)."""
    if isinstance(failure, CorruptRecordException):
        return True
    return isinstance(failure, Exception) and not isinstance(failure, KafkaError)


def placeholder(topic: str, partition: int, offset: int) -> ConsumerRecord[bytes, bytes]:
    """A record that stands for an undecodable one: its position, no content."""
    return ConsumerRecord(topic, partition, offset, -1, 0, None, None, None, -1, -1, ())


async def fetch_past_undecodable(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    resume_at: Callable[[], int | None],
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]] | Undecodable]:
    """Records of `tp` from `resume_at()` (the first not handed on; None: the commit),
    with each undecodable one as `Undecodable`, until a round reads cleanly. Whoever
    iterates hands each item on before asking for the next, so that `resume_at()`
    follows. Kafka's own errors propagate."""
    await _rewind(consumer, tp, resume_at())
    step = PROBE_RECORDS
    found = False
    while True:
        try:
            fetched = await consumer.getmany(tp, timeout_ms=PROBE_WAIT_MS, max_records=step)
        except Exception as failure:
            if not is_undecodable(failure):
                raise  # the cluster's trouble, not a record's
            if step > 1:  # the records before it in this round were lost: again, singly
                await _rewind(consumer, tp, resume_at())
                step = 1
                continue
            offset = await consumer.position(tp)
            yield Undecodable(offset, f"the Kafka client could not decode its batch: {failure!r}")
            consumer.seek(tp, offset + 1)
            found = True
            continue
        records = fetched.get(tp, [])
        if records:
            yield records
        if step > 1 or found or not records:
            return


async def _rewind(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int | None) -> None:
    """Put `tp`'s position at `offset`, or at its commit (the beginning if none)."""
    if offset is not None:
        consumer.seek(tp, offset)
        return
    committed = await consumer.committed(tp)
    if committed is None:
        await consumer.seek_to_beginning(tp)  # as `auto_offset_reset="earliest"`
    else:
        consumer.seek(tp, committed)
