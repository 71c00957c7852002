"""Fetches the Kafka client cannot decode: read past them, record by record.

aiokafka decodes a record batch as it hands records out. A record it cannot decode (a
header key not in UTF-8, which a foreign producer can write; a batch whose CRC does not
match, which the broker kept as written) raises inside `getmany`, before any codec of ours
sees it, and again at every fetch of its batch and after every restart: left alone, it
stops a consumer for good. The fetch that raised may also have moved other partitions'
positions past records it never returned.

`read_past_undecodable` takes every partition back to the first record its consumer has not
handed on; then fetches each one's raw record set from there (`rawfetch`), reads it record
by record (`recordbatch`), and puts the consumer after what it read. Every
record that can be read is handed on as the client would have; only the record that cannot
is set aside, as `Undecodable`, with its bytes whenever they can be parsed. Whatever lies
beyond that one fetch, the consumer reads again; if it fails again, the next search starts
there.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    CorruptRecordException,
    KafkaError,
    OffsetOutOfRangeError,
    UnsupportedCodecError,
)

from processor.settings import KafkaSettings

from .rawfetch import FETCH_BYTES, MAX_FETCH_BYTES, RawFetcher
from .recordbatch import ReadRecords, Undecodable, read_records

log = logging.getLogger(__name__)


def is_undecodable(failure: BaseException) -> bool:
    """Whether a failed fetch may have met a record that cannot be read: any exception but
    Kafka's own errors, and of those a batch that fails its CRC or names a codec the
    client lacks (the search reads it again and decides for itself)."""
    if isinstance(failure, (CorruptRecordException, UnsupportedCodecError)):
        return True
    return isinstance(failure, Exception) and not isinstance(failure, KafkaError)


async def read_past_undecodable(
    consumer: AIOKafkaConsumer,
    kafka: KafkaSettings,
    resume_at: Mapping[TopicPartition, int | None],
    current: Callable[[TopicPartition], bool],
) -> AsyncGenerator[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]] | Undecodable]]:
    """After a fetch raised on a record the client cannot decode: each partition of
    `resume_at`, from the first record not handed on (None: the commit), as runs of
    readable records and single `Undecodable` ones, in offset order, with the partition
    they belong to, read as `kafka` says the consumers read. Every partition is rewound
    before any is read. Whoever iterates hands each item on before asking for the next,
    and closes the iteration if it stops early (`contextlib.aclosing`). Kafka's errors
    propagate.

    `current(tp)`: whether `tp` is still assigned as it was when `resume_at` was taken. A
    partition revoked meanwhile (perhaps given back) is neither moved nor read: its offset
    belongs to the assignment that ended (the next one starts from the commit)."""
    starts = []
    for tp, offset in resume_at.items():
        start = await _rewind(consumer, tp, offset, current)
        if start is not None:
            starts.append((tp, start))
    async with RawFetcher(kafka) as raw:
        for tp, start in starts:
            async for item in _fetch_past(consumer, raw, tp, start, current):
                yield tp, item


async def _rewind(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    offset: int | None,
    current: Callable[[TopicPartition], bool],
) -> int | None:
    """Put `tp`'s position back at `offset` (the first record not handed on), or else at
    its commit, or else at its beginning (as `auto_offset_reset` "earliest"); where it is,
    or None when `tp` is no longer `current` (then it is left as it is).

    Done for every partition before any is searched: the fetch that raised may have moved
    the others past records it never returned, and a search that fails half-way must not
    leave them there."""
    if offset is None:
        committed = await consumer.committed(tp)
        offset = None if committed is None else int(committed)
    # (the lookup above, or an earlier partition's, may have outlasted a rebalance)
    if not current(tp):
        return None
    if offset is None:
        await consumer.seek_to_beginning(tp)
        return int(await consumer.position(tp))
    consumer.seek(tp, offset)
    return offset


async def _fetch_past(
    consumer: AIOKafkaConsumer,
    raw: RawFetcher,
    tp: TopicPartition,
    start: int,
    current: Callable[[TopicPartition], bool],
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]] | Undecodable]:
    """Records of `tp` from `start`, as runs of readable records and single `Undecodable`
    ones, as far as one raw fetch reaches; then the consumer's position follows them,
    while `tp` is `current` (nothing more is read or moved once it is not).

    A `start` the partition no longer holds (retention deleted the records after the
    commit while they waited) is read from where the partition begins now, as the
    consumer itself does (`auto_offset_reset` "earliest"): else every search, after every
    restart, would fail there again."""
    try:
        read = await read_at(raw, tp, start)
    except OffsetOutOfRangeError:
        if not current(tp):
            return
        await consumer.seek_to_beginning(tp)
        begins = int(await consumer.position(tp))
        log.warning(
            "%s/%d holds no offset %d any more (deleted by retention?): reading on from %d,"
            " where it begins",
            tp.topic,
            tp.partition,
            start,
            begins,
        )
        read = await read_at(raw, tp, begins)
    run: list[ConsumerRecord[bytes, bytes]] = []
    for item in read.items:
        if isinstance(item, Undecodable):
            if run:
                yield run
                run = []
            yield item
        else:
            run.append(item)
    if run:
        yield run
    # (a fetch of nothing but control records hands on no item for the reader to check)
    if read.next_offset is not None and current(tp):
        consumer.seek(tp, read.next_offset)


async def read_at(raw: RawFetcher, tp: TopicPartition, start: int) -> ReadRecords:
    """What one raw fetch of `tp` at `start` holds, asking for more bytes while its first
    record batch does not fit."""
    size = FETCH_BYTES
    while True:
        fetched = await raw.fetch(tp, start, size)
        read = read_records(
            tp.topic, tp.partition, fetched.data, start, fetched.aborted, fetched.high_watermark
        )
        if read.next_offset is not None or not fetched.data or size >= MAX_FETCH_BYTES:
            return read
        size *= 4
