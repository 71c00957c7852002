"""`recordbatch.read_records` against the Kafka client's own writer and reader."""

from __future__ import annotations

import struct
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.errors import (
    CorruptRecordException,
    KafkaConnectionError,
    OffsetOutOfRangeError,
    UnsupportedCodecError,
)
from aiokafka.protocol import fetch as fetch_protocol
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from hypothesis import given, settings
from hypothesis import strategies as st
from pipeline import NotUtf8, one_record_batch, produce_batch, with_crc

from processor.runtime import undecodable
from processor.runtime.rawfetch import FETCH_BYTES, RawFetcher, RawRecords
from processor.runtime.rawfetch import _aborted as aborted_in
from processor.runtime.recordbatch import ReadRecords, Undecodable, read_records
from processor.runtime.undecodable import is_undecodable, read_at, read_past_undecodable
from processor.settings import KafkaSettings

TOPIC = "input"
Header = tuple[str, bytes | None]
Spec = tuple[bytes | None, bytes | None, list[Header]]


def batch(
    base_offset: int, records: list[Spec], *, codec: int = 0, producer: int | None = None
) -> bytes:
    """A v2 record batch as a producer writes it, at `base_offset` (as the broker sets it);
    with `producer`, in a transaction of that producer id's."""
    builder = _DefaultRecordBatchBuilderPy(
        magic=2,
        compression_type=codec,  # none, gzip, snappy, lz4, zstd
        is_transactional=producer is not None,
        producer_id=-1 if producer is None else producer,
        producer_epoch=-1 if producer is None else 0,
        base_sequence=-1 if producer is None else 0,
        batch_size=1 << 24,
    )
    for delta, (key, value, headers) in enumerate(records):
        builder.append(delta, timestamp=1_000 + delta, key=key, value=value, headers=headers)
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base_offset)
    return bytes(data)


def client_read(data: bytes) -> list[ConsumerRecord[bytes, bytes]]:
    """What the Kafka client itself hands out for `data`."""
    out = []
    records = MemoryRecords(data)
    while records.has_next():
        for r in records.next_batch():
            out.append(
                ConsumerRecord(
                    TOPIC,
                    0,
                    r.offset,
                    r.timestamp,
                    r.timestamp_type,
                    r.key,
                    r.value,
                    r.checksum,
                    -1 if r.key is None else len(r.key),
                    -1 if r.value is None else len(r.value),
                    tuple(r.headers),
                )
            )
    return out


def read(data: bytes, start: int = 0) -> ReadRecords:
    return read_records(TOPIC, 0, data, start)


blobs = st.none() | st.binary(max_size=40)
headers = st.lists(st.tuples(st.text(max_size=8), blobs), max_size=3)
specs = st.lists(st.tuples(blobs, blobs, headers), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(st.lists(specs, min_size=1, max_size=4), st.integers(0, 4), st.integers(0, 30), st.data())
def test_readable_batches_read_as_the_client_reads_them(
    batches: list[list[Spec]], codec: int, first: int, data: Any
) -> None:
    chunks, offset = [], first
    for records in batches:
        chunks.append(batch(offset, records, codec=codec))
        offset += len(records)
    raw = b"".join(chunks)
    start = data.draw(st.integers(first, offset), label="start")
    got = read(raw, start)
    assert got.items == [r for r in client_read(raw) if r.offset >= start]
    assert got.next_offset == offset


def test_a_header_key_not_in_utf8_sets_aside_that_record_only_with_its_bytes() -> None:
    raw = batch(
        10,
        [
            (b"a", b"before", []),
            (b"b", b"poison", [(NotUtf8("trace"), b"x")]),
            (b"c", b"after", [("trace", b"y")]),
        ],
    )
    got = read(raw)
    before, poison, after = got.items
    assert isinstance(before, ConsumerRecord)
    assert (before.offset, before.value) == (10, b"before")
    assert isinstance(poison, Undecodable)
    assert (poison.offset, poison.record.key, poison.record.value) == (11, b"b", b"poison")
    assert poison.detail == "a header key is not UTF-8"
    assert isinstance(after, ConsumerRecord)
    assert (after.offset, after.value, after.headers) == (12, b"after", (("trace", b"y"),))
    assert got.next_offset == 13


def test_every_record_of_a_batch_failing_its_crc_is_set_aside_with_its_bytes() -> None:
    good = batch(0, [(b"k", b"fine", [])])
    corrupt = bytearray(batch(1, [(b"k", b"one", []), (b"k", b"two", [])]))
    corrupt[17] ^= 0xFF  # the CRC
    got = read(good + bytes(corrupt))
    assert [(type(i).__name__, i.offset) for i in got.items] == [
        ("ConsumerRecord", 0),
        ("Undecodable", 1),
        ("Undecodable", 2),
    ]
    assert [i.record.value for i in got.items[1:] if isinstance(i, Undecodable)] == [
        b"one",
        b"two",
    ]
    assert {i.detail for i in got.items[1:] if isinstance(i, Undecodable)} == {
        "its record batch fails its CRC"
    }


def test_a_batch_whose_records_cannot_be_parsed_is_set_aside_by_position() -> None:
    data = bytearray(batch(5, [(b"k", b"v", []), (b"k", b"w", [])]))
    data[61] = 0x7E  # the first record's length varint: 63 bytes, far more than it has
    got = read(with_crc(data) + batch(7, [(b"k", b"next", [])]))
    assert [(type(i).__name__, i.offset) for i in got.items] == [
        ("Undecodable", 5),
        ("Undecodable", 6),
        ("ConsumerRecord", 7),
    ]
    unreadable = got.items[0]
    assert isinstance(unreadable, Undecodable)
    assert unreadable.record.value is None
    assert unreadable.detail.startswith("unreadable batch")


def test_a_batch_cut_short_by_the_fetch_size_is_left_for_the_next_fetch() -> None:
    whole = batch(0, [(b"k", b"v", [])])
    cut = batch(1, [(b"k", b"w" * 100, [])])
    got = read(whole + cut[:50])
    assert [i.offset for i in got.items] == [0]
    assert got.next_offset == 1
    alone = read(cut[:50])
    assert (alone.items, alone.next_offset) == ([], None)


def marker(offset: int, producer: int, *, commit: bool) -> bytes:
    """The control batch that ends `producer`'s transaction, as the broker writes it."""
    key = struct.pack(">hh", 0, 1 if commit else 0)  # version, type (0 abort, 1 commit)
    data = bytearray(batch(offset, [(key, struct.pack(">hi", 0, 0), [])], producer=producer))
    struct.pack_into(">h", data, 21, 0x20 | 0x10)  # attributes: control, transactional
    return with_crc(data)


def test_a_transaction_marker_is_passed_over() -> None:
    got = read(marker(3, 7, commit=True) + batch(4, [(b"k", b"v", [])]))
    assert [i.offset for i in got.items] == [4]
    assert got.next_offset == 5


def test_read_committed_passes_over_an_aborted_transaction_only() -> None:
    raw = (
        batch(0, [(b"k", b"aborted", [])], producer=7)
        + batch(1, [(b"k", b"plain", [])])
        + batch(2, [(b"k", b"committed", [])], producer=8)
        + marker(3, 7, commit=False)
        + marker(4, 8, commit=True)
        + batch(5, [(b"k", b"later", [])], producer=7)
    )
    committed = read_records(TOPIC, 0, raw, 0, [(7, 0)])
    assert [(i.offset, i.value) for i in committed.items] == [
        (1, b"plain"),
        (2, b"committed"),
        (5, b"later"),  # the abort marker ended producer 7's aborted transaction
    ]
    assert committed.next_offset == 6
    uncommitted = read(raw)
    assert [i.offset for i in uncommitted.items] == [0, 1, 2, 5]


Step = tuple[str, int, int]  # (plain | open | commit | abort, producer, records)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["plain", "open", "commit", "abort"]),
            st.integers(1, 3),
            st.integers(1, 3),
        ),
        max_size=14,
    ),
    st.data(),
)
def test_read_committed_reads_as_the_client_reads_committed(steps: list[Step], data: Any) -> None:
    """Transactions of several producers, interleaved, committed, aborted or left open:
    what is read committed is what the Kafka client hands out reading committed."""
    chunks: list[bytes] = []
    aborted: list[tuple[int, int]] = []
    open_since: dict[int, int] = {}
    offset = 0
    for kind, producer, count in steps:
        if kind in ("commit", "abort"):
            if producer not in open_since:
                continue  # a broker writes a marker only for a transaction under way
            first = open_since.pop(producer)
            if kind == "abort":
                aborted.append((producer, first))
            chunks.append(marker(offset, producer, commit=kind == "commit"))
            offset += 1
            continue
        records: list[Spec] = [(b"k", b"%d" % (offset + n), []) for n in range(count)]
        chunks.append(batch(offset, records, producer=producer if kind == "open" else None))
        if kind == "open":
            open_since.setdefault(producer, offset)
        offset += count
    raw = b"".join(chunks)
    start = data.draw(st.integers(0, offset), label="start")
    expected = PartitionRecords(
        TopicPartition(TOPIC, 0), MemoryRecords(raw), aborted, start, None, None, True, 1
    )
    got = read_records(TOPIC, 0, raw, start, aborted)
    # (the client takes the set as starting at its fetch offset: filtered here)
    assert [(i.offset, i.value) for i in got.items] == [
        (r.offset, r.value) for r in expected if r.offset >= start
    ]
    assert all(isinstance(i, ConsumerRecord) for i in got.items)


@pytest.mark.parametrize("version", range(12))
def test_the_aborted_transactions_are_found_in_every_fetch_response_version(
    version: int,
) -> None:
    """Laid out as the client's own schema of that version says, after the high watermark."""
    response = getattr(fetch_protocol, f"FetchResponse_v{version}")
    topics = response.SCHEMA.fields[list(response.SCHEMA.names).index("topics")].array_of
    partition = topics.fields[list(topics.names).index("partitions")].array_of
    names = list(partition.names)[3:]  # after partition, error_code, highwater_offset
    fields = [[(7, 3)] if name == "aborted_transactions" else b"" for name in names]
    expected = [(7, 3)] if "aborted_transactions" in names else []
    assert aborted_in(version, fields) == expected


def test_an_old_format_message_set_is_read_by_the_clients_own_reader() -> None:
    builder = LegacyRecordBatchBuilder(magic=1, compression_type=0, batch_size=1 << 20)
    builder.append(0, timestamp=1_000, key=b"k", value=b"old")
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, 42)
    got = read(bytes(data))
    assert [(i.offset, i.value) for i in got.items if isinstance(i, ConsumerRecord)] == [
        (42, b"old")
    ]
    assert got.next_offset == 43


def test_bytes_of_no_known_format_are_set_aside_by_position_and_passed() -> None:
    data = bytearray(batch(8, [(b"k", b"v", [])]))
    data[16] = 7  # magic: no such record format
    got = read(bytes(data) + batch(9, [(b"k", b"next", [])]))
    assert [(type(i).__name__, i.offset) for i in got.items] == [
        ("Undecodable", 8),
        ("ConsumerRecord", 9),
    ]
    assert got.next_offset == 10


async def test_a_first_batch_larger_than_asked_for_is_fetched_again_with_room() -> None:
    """A broker may cut the first batch short at the fetch's size (Kafka sends it whole,
    others need not): the search asks again for more, up to its limit."""
    large = batch(0, [(b"k", b"x" * 3_000_000, [])]) + batch(1, [(b"k", b"next", [])])
    asked: list[int] = []

    class Cutting:
        async def fetch(self, tp: TopicPartition, offset: int, max_bytes: int) -> RawRecords:
            asked.append(max_bytes)
            return RawRecords(large[:max_bytes], None)

    got = await read_at(Cutting(), TopicPartition(TOPIC, 0), 0)  # type: ignore[arg-type]
    assert [i.offset for i in got.items] == [0, 1]
    assert asked == [1 << 20, 1 << 22]


def test_a_batch_compressed_with_no_known_codec_is_set_aside_by_position() -> None:
    data = bytearray(batch(3, [(b"k", b"v", []), (b"k", b"w", [])]))
    struct.pack_into(">h", data, 21, 5)  # attributes: compression type 5, which none is
    got = read(with_crc(data) + batch(5, [(b"k", b"next", [])]))
    assert [(type(i).__name__, i.offset) for i in got.items] == [
        ("Undecodable", 3),
        ("Undecodable", 4),
        ("ConsumerRecord", 5),
    ]


@pytest.mark.parametrize(
    ("failure", "searched"),
    [
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), True),
        (CorruptRecordException("Invalid CRC"), True),
        (UnsupportedCodecError("libraries for codec 5 not found"), True),
        (KafkaConnectionError("broker down"), False),
    ],
)
def test_which_failed_fetches_are_searched_record_by_record(
    failure: BaseException, searched: bool
) -> None:
    assert is_undecodable(failure) is searched


def search(raw: bytes, start: int, end: int) -> list[int]:
    """The offsets a search of `raw` hands on from `start`, read again from each read's
    `next_offset` (as a broker hands the batch holding an offset out again) until `end`;
    each read must get further, in order."""
    offsets: list[int] = []
    while start < end:
        got = read(raw, start)
        assert got.next_offset is not None
        assert got.next_offset > start, f"no progress from {start}"
        read_offsets = [i.offset for i in got.items]
        assert read_offsets == sorted(set(read_offsets))
        assert all(start <= o < got.next_offset for o in read_offsets)
        offsets += read_offsets
        start = got.next_offset
    return offsets


@pytest.mark.parametrize("codec", [1, 2, 3, 4])
@pytest.mark.parametrize("fault", ["corrupt", "no known codec"])
def test_a_compressed_batch_that_cannot_be_parsed_is_set_aside_to_its_last_offset(
    codec: int, fault: str
) -> None:
    """Compressed, records take far less than 7 bytes each: the batch's size is no bound
    on its offsets, and each offset is set aside, once, then the batch after is read."""
    data = bytearray(batch(0, [(b"k", b"v", [])] * 1_000, codec=codec))
    assert struct.unpack_from(">i", data, 8)[0] // 7 < 1_000
    if fault == "corrupt":  # the CRC fails too: the broker kept what a producer wrote
        for at in range(len(data) // 2, len(data) // 2 + 16):
            data[at] ^= 0xFF
        raw = bytes(data)
    else:
        struct.pack_into(">h", data, 21, 5)
        raw = with_crc(data)
    raw += batch(1_000, [(b"k", b"next", [])])
    got = read(raw)
    assert [i.offset for i in got.items] == list(range(1_001))
    assert all(isinstance(i, Undecodable) and i.record.value is None for i in got.items[:-1])
    assert isinstance(got.items[-1], ConsumerRecord)
    assert got.next_offset == 1_001
    assert search(raw, 0, 1_001) == list(range(1_001))
    assert search(raw, 700, 1_001) == list(range(700, 1_001))


def test_a_header_that_fails_its_crc_claims_no_offset_of_the_batch_after_it() -> None:
    data = bytearray(batch(0, [(b"k", b"v", [])] * 3))
    struct.pack_into(">i", data, 23, 2**31 - 1)  # lastOffsetDelta: the CRC no longer agrees
    data[61] = 0x7E  # and the records cannot be parsed
    raw = bytes(data) + batch(3, [(b"k", b"next", [])])
    got = read(raw)
    assert [(type(i).__name__, i.offset) for i in got.items] == [
        ("Undecodable", 0),
        ("Undecodable", 1),
        ("Undecodable", 2),
        ("ConsumerRecord", 3),
    ]
    assert got.next_offset == 4


def test_a_header_that_fails_its_crc_is_set_aside_a_part_at_a_time() -> None:
    """However many offsets a corrupt header claims, one read sets aside a bounded number,
    and the next goes on from there."""
    data = bytearray(batch(10, [(b"k", b"v", [])]))
    struct.pack_into(">i", data, 23, 2**31 - 1)
    data[61] = 0x7E
    got = read(bytes(data))
    assert [i.offset for i in got.items] == list(range(10, 10 + (1 << 16)))
    assert got.next_offset == 10 + (1 << 16)
    near_end = read(bytes(data), 10 + 2**31 - 4)
    assert [i.offset for i in near_end.items] == list(range(10 + 2**31 - 4, 10 + 2**31))
    assert near_end.next_offset == 10 + 2**31


def test_a_record_offset_past_its_batchs_last_is_not_read_again_and_again() -> None:
    """A header (failing its CRC) that ends its batch before its records end: reading from
    after that end finds them again; they are set aside by position instead."""
    data = bytearray(batch(0, [(b"k", b"a", []), (b"k", b"b", []), (b"k", b"c", [])]))
    struct.pack_into(">i", data, 23, 0)
    got = read(bytes(data))
    (only,) = got.items
    assert isinstance(only, Undecodable)
    assert (only.offset, only.record.value) == (0, None)
    assert got.next_offset == 1


def test_a_search_gets_past_batches_that_disagree_on_an_offset() -> None:
    """A header claims `start`, but the batch after it (cut short) begins before: either
    lies, and the next search would find the same, so `start` is set aside."""
    data = bytearray(batch(0, [(b"k", b"v", [])] * 3))
    struct.pack_into(">i", data, 23, 9)
    data[61] = 0x7E
    cut = batch(3, [(b"k", b"x" * 100, [])] * 3)[:40]
    got = read(bytes(data) + cut, 5)
    assert [(type(i).__name__, i.offset) for i in got.items] == [("Undecodable", 5)]
    assert got.next_offset == 6


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 400),
            st.integers(0, 4),
            st.sampled_from(["none", "crc", "body", "codec", "claims more"]),
        ),
        min_size=1,
        max_size=4,
    ),
    st.data(),
)
def test_a_search_from_any_offset_gets_further_and_hands_every_offset_on_once(
    batches: list[tuple[int, int, str]], data: Any
) -> None:
    """Batches of many small records (compressed, far under 7 bytes each), some corrupt:
    reading from any offset always gets further, and reading on from each read's
    `next_offset` hands every offset on once, in order, as a record or set aside."""
    chunks, offset = [], 0
    for n, (count, codec, fault) in enumerate(batches):
        chunk = bytearray(batch(offset, [(b"k", b"v", [])] * count, codec=codec))
        if fault == "crc":
            chunk[17] ^= 0xFF
        elif fault == "body":
            at = data.draw(st.integers(61, len(chunk) - 1), label="corrupt byte")
            chunk[at] ^= 0xFF
        elif fault == "codec":
            struct.pack_into(">h", chunk, 21, 5)
            chunk = bytearray(with_crc(chunk))
        elif fault == "claims more" and n < len(batches) - 1:  # the batch after bounds it
            struct.pack_into(">i", chunk, 23, count - 1 + data.draw(st.integers(1, 2**30)))
        chunks.append(bytes(chunk))
        offset += count
    raw = b"".join(chunks)
    start = data.draw(st.integers(0, offset - 1), label="start")
    assert search(raw, start, offset) == list(range(start, offset))


class RetainedFrom:
    """A partition whose records before `log_start` retention has deleted: a raw fetch
    there is answered OFFSET_OUT_OF_RANGE, as a broker answers it."""

    def __init__(self, log_start: int, data: bytes) -> None:
        self.log_start = log_start
        self.data = data
        self.asked: list[int] = []

    async def fetch(self, tp: TopicPartition, offset: int, max_bytes: int) -> RawRecords:
        self.asked.append(offset)
        if offset < self.log_start:
            raise OffsetOutOfRangeError(f"{tp.topic}/{tp.partition} begins at {self.log_start}")
        return RawRecords(self.data[:max_bytes], [])

    async def __aenter__(self) -> RetainedFrom:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


class ConsumerOf:
    """The consumer calls a search makes, on a partition that begins at `log_start` and
    whose group committed `committed`."""

    def __init__(self, log_start: int, committed: int) -> None:
        self.log_start = log_start
        self._committed = committed
        self.positions: dict[TopicPartition, int] = {}

    async def committed(self, tp: TopicPartition) -> int:
        return self._committed

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.positions[tp] = self.log_start

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


async def test_a_search_from_records_retention_deleted_reads_on_where_the_log_begins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Retention may delete the records after the group's commit (the processor was down
    longer than the topic keeps them): a search from that commit is answered
    OFFSET_OUT_OF_RANGE. It reads on where the partition begins now, as the consumer
    itself does (`auto_offset_reset` "earliest"); raising instead, every restart would
    fetch the undecodable record again and fail the same way, for ever."""
    tp = TopicPartition(TOPIC, 0)
    data = batch(
        20,
        [
            (b"a", b"first kept", []),
            (b"b", b"poison", [(NotUtf8("trace"), b"x")]),
            (b"c", b"after", []),
        ],
    )
    raw = RetainedFrom(20, data)
    monkeypatch.setattr(undecodable, "RawFetcher", lambda kafka: raw)
    consumer = ConsumerOf(log_start=20, committed=7)
    search = read_past_undecodable(
        consumer,  # type: ignore[arg-type]
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        {tp: None},
        lambda _: True,
    )
    got = [item async for _, item in search]
    assert [
        [(r.offset, r.value) for r in item]
        if isinstance(item, list)
        else ("set aside", item.offset, item.record.value)
        for item in got
    ] == [[(20, b"first kept")], ("set aside", 21, b"poison"), [(22, b"after")]]
    assert consumer.positions[tp] == 23


def claiming_past_its_end(batch: bytearray, offsets: int, *, parsable: bool) -> bytes:
    """`batch` (one record) with its lastOffsetDelta claiming `offsets` offsets and its CRC
    failing (as on-disk corruption or a faulty producer leaves it); unless `parsable`, its
    record cannot be parsed either."""
    struct.pack_into(">i", batch, 23, offsets - 1)
    if not parsable:
        batch[61] = 0x7E  # the record's length (a varint): 63 bytes, more than it has
    struct.pack_into(">I", batch, 17, 0)
    return bytes(batch)


@pytest.mark.parametrize("parsable", [True, False], ids=["its record read", "unreadable"])
def test_a_corrupt_last_batch_is_read_no_further_than_the_high_watermark(parsable: bool) -> None:
    """A batch that fails its CRC may claim any offsets, and the last one has no batch after
    it to bound the claim; the high watermark does (a broker that appended the batch whole
    and found its end by its records, before the corruption). Going by the claim, a search
    dead-letters offsets that hold nothing, up to 65536 of them, and moves the consumer,
    and so the commit, past the log end: the records written there next are skipped."""
    data = claiming_past_its_end(bytearray(batch(7, [(b"k", b"v", [])])), 1000, parsable=parsable)
    got = read_records(TOPIC, 0, batch(6, [(b"k", b"before", [])]) + data, 6, None, 8)
    assert [(type(i).__name__, i.offset) for i in got.items] == [
        ("ConsumerRecord", 6),
        ("Undecodable", 7),
    ]
    assert got.next_offset == 8
    # a high watermark that lags where the read began bounds nothing: the claim stands
    lagging = read_records(TOPIC, 0, data, 7, None, 7)
    assert lagging.next_offset == 7 + 1000


async def test_a_raw_fetch_reports_the_high_watermark_a_search_reads_to(
    bootstrap_servers: str,
) -> None:
    """The broker's high watermark comes with the raw record set. (This broker gives a
    corrupt batch every offset it claims, the next record going after them, so here the
    claim and the high watermark agree: the search reads to the log end, no further.)"""
    topic = f"corrupt-end-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(topic, 0)
    async with AIOKafkaProducer(bootstrap_servers=bootstrap_servers) as producer:
        await producer.send_and_wait(topic, b"before", key=b"k", partition=0)
        corrupt = claiming_past_its_end(one_record_batch(b"k", b"corrupt"), 10, parsable=False)
        offset = await produce_batch(bootstrap_servers, topic, 0, corrupt)
        async with RawFetcher(KafkaSettings(bootstrap_servers=bootstrap_servers)) as raw:
            fetched = await raw.fetch(tp, offset, FETCH_BYTES)
            read = await read_at(raw, tp, offset)
        after = await producer.send_and_wait(topic, b"after", key=b"k", partition=0)
    assert fetched.high_watermark == after.offset  # the log's end, where the next record went
    assert [item.offset for item in read.items] == list(range(offset, after.offset))
    assert read.next_offset == after.offset
