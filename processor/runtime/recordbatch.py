"""Record batches read as the broker stores them, one record at a time, never giving up on
the records around one that cannot be read.

The Kafka client decodes a whole batch as it hands records out: a header key that is not
UTF-8 (a foreign producer can write one) makes it raise, and every record after that one in
its batch is lost to it too. `read_records` reads the raw record set of a fetch instead
(format v2, as every client since Kafka 0.11 writes it) and sorts each record into one of:

- a `ConsumerRecord`, exactly as the client would have handed it out;
- an `Undecodable` with the record's bytes: a header key that is not UTF-8 (the protocol
  says header keys are strings), or any record of a batch that fails its CRC (the broker
  kept what a faulty producer wrote: the bytes are what there is, not to be trusted);
- an `Undecodable` by position only, for each record of a batch whose records cannot even
  be parsed (corrupt, or compressed with a codec this install lacks).

Older formats (v0, v1) have no headers: the client's own reader takes them. Read committed,
the batches of aborted transactions are passed over, as the client passes them over. Pure:
bytes in, records out.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise

from aiokafka import ConsumerRecord
from aiokafka.codec import gzip_decode, lz4_decode, snappy_decode, zstd_decode
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c, decode_varint

# baseOffset, batchLength, partitionLeaderEpoch, magic, crc, attributes, lastOffsetDelta,
# baseTimestamp, maxTimestamp, producerId, producerEpoch, baseSequence, recordCount
_HEADER = struct.Struct(">qiibIhiqqqhii")
_LOG_OVERHEAD = 12  # baseOffset and batchLength: what batchLength does not count
_CRC_FROM = 21  # the CRC covers the batch from its attributes on
_MAGIC_AT = 16
_COMPRESSION = 0x07
_LOG_APPEND_TIME = 0x08
_TRANSACTIONAL = 0x10
_CONTROL = 0x20
_ABORT = 0  # a control record's key: version (int16), then type (int16): 0 abort, 1 commit
# A batch that fails its CRC may claim up to 2**31 offsets: one read sets aside at most this
# many by position (some 16 MB), and the next search goes on from the first it left.
_MOST_SET_ASIDE = 1 << 16
_DECOMPRESS: dict[int, Callable[[bytes], bytes]] = {
    1: gzip_decode,
    2: snappy_decode,
    3: lz4_decode,
    4: zstd_decode,
}


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A record that cannot be handed on: `record` holds its position, and its key and
    value when they could be read (None otherwise); `detail` says why."""

    record: ConsumerRecord[bytes, bytes]
    detail: str

    @property
    def offset(self) -> int:
        """Where the record is."""
        return int(self.record.offset)


@dataclass(slots=True)
class ReadRecords:
    """What `read_records` found, in offset order."""

    items: list[ConsumerRecord[bytes, bytes] | Undecodable] = field(default_factory=list)
    next_offset: int | None = None
    """Where to read on: after the last batch read whole, or after the offsets of one set
    aside so far (None: not one batch was read whole)."""


class _Malformed(Exception):
    """A batch's records cannot be parsed."""


class _Aborts:
    """Which producers' transactional batches are aborted, batch by batch, from the
    fetch's list of aborted transactions (producer id, first offset): a producer's
    batches are from its transaction's first offset until its abort marker."""

    def __init__(self, aborted: Iterable[tuple[int, int]]) -> None:
        self._ahead = sorted(aborted, key=lambda a: a[1], reverse=True)
        self._producers: set[int] = set()

    def skips(self, base_offset: int, producer_id: int, attributes: int, body: bytes) -> bool:
        """Whether the batch at `base_offset` belongs to an aborted transaction; a control
        batch that marks an abort ends that producer's."""
        while self._ahead and self._ahead[-1][1] <= base_offset:
            self._producers.add(self._ahead.pop()[0])
        if attributes & _CONTROL:
            if _is_abort_marker(attributes, body):
                self._producers.discard(producer_id)
            return False
        return bool(attributes & _TRANSACTIONAL) and producer_id in self._producers


def _is_abort_marker(attributes: int, body: bytes) -> bool:
    """Whether a control batch marks an abort (its record's key says so)."""
    try:
        records = _parse_records(body, attributes, 1)
    except Exception:  # whatever the bytes make a codec or parser raise: no marker known
        return False
    key = records[0][2]
    return key is not None and len(key) >= 4 and struct.unpack_from(">h", key, 2)[0] == _ABORT


def _record(
    topic: str,
    partition: int,
    where: tuple[int, int, int],
    key: bytes | None,
    value: bytes | None,
    headers: tuple[tuple[str, bytes | None], ...],
) -> ConsumerRecord[bytes, bytes]:
    """A record as the client hands it out; `where` is (offset, timestamp, its type)."""
    offset, timestamp, timestamp_type = where
    return ConsumerRecord(
        topic,
        partition,
        offset,
        timestamp,
        timestamp_type,
        key,
        value,
        None,
        -1 if key is None else len(key),
        -1 if value is None else len(value),
        headers,
    )


def placeholder(topic: str, partition: int, offset: int) -> ConsumerRecord[bytes, bytes]:
    """A record that stands for an unreadable one: its position, no content."""
    return _record(topic, partition, (offset, -1, 0), None, None, ())


def _unreadable(topic: str, partition: int, offset: int, why: str) -> Undecodable:
    """The record at `offset`, set aside by its position only."""
    return Undecodable(placeholder(topic, partition, offset), why)


def read_records(
    topic: str,
    partition: int,
    data: bytes,
    start: int,
    aborted: Iterable[tuple[int, int]] | None = None,
    high_watermark: int | None = None,
) -> ReadRecords:
    """The records of `data` (a fetch's record set for one partition) from offset `start`
    on. A batch cut short at the end (the fetch's size limit) is left for the next fetch.
    `aborted` (read committed): the fetch's aborted transactions, whose batches are passed
    over; None: every record counts. `high_watermark`: the partition's, if known (no record
    lies at or past it).

    Whenever a whole batch says it holds `start` or an offset after it, `next_offset` is
    past `start`: a search from there always gets further."""
    out = ReadRecords()
    aborts = None if aborted is None else _Aborts(aborted)
    view = memoryview(data)
    pos = 0
    claimed = -1  # the last offset any whole batch says it holds
    whole = True
    while whole and len(view) - pos >= _LOG_OVERHEAD:
        base_offset, length = struct.unpack_from(">qi", view, pos)
        end = pos + _LOG_OVERHEAD + length
        if length < 0 or end > len(view):
            break
        batch = view[pos:end]
        pos = end
        # where the next batch begins (even one cut short): a batch cannot reach into it
        following: int | None = None
        if len(view) - pos >= 8:
            following = struct.unpack_from(">q", view, pos)[0]
        # should corrupt batches overlap, an offset is read once, and never an earlier one
        floor = start if out.next_offset is None else max(start, out.next_offset)
        magic = batch[_MAGIC_AT] if len(batch) > _MAGIC_AT else -1
        if magic == 2 and len(batch) >= _HEADER.size:
            last, after, whole = _read_v2(
                topic, partition, batch, (following, high_watermark), floor, out.items, aborts
            )
        elif magic in (0, 1):
            after = _read_legacy(topic, partition, batch, floor, out.items)
            last = after - 1
        else:  # no batch of any format: only its position is known
            if base_offset >= floor:
                out.items.append(_unreadable(topic, partition, base_offset, "no record batch"))
            last = int(base_offset)
            after = last + 1
        claimed = max(claimed, last)
        out.next_offset = after if out.next_offset is None else max(out.next_offset, after)
    if out.next_offset is not None and out.next_offset <= start <= claimed:
        # a batch says it holds `start`, but the batch after it begins at or before that:
        # one of them lies, and every search from `start` would find the same
        out.items.append(_unreadable(topic, partition, start, "no batch agrees on its offset"))
        out.next_offset = start + 1
    return out


def _read_v2(
    topic: str,
    partition: int,
    batch: memoryview,
    limits: tuple[int | None, int | None],
    start: int,
    out: list[ConsumerRecord[bytes, bytes] | Undecodable],
    aborts: _Aborts | None,
) -> tuple[int, int, bool]:
    """Append the records of one v2 batch at or after `start` (none of an aborted
    transaction's when `aborts` tracks them), `limits` the base offset of the batch after
    it and the partition's high watermark, each if known: the last offset its header
    claims, the offset after what was read, and whether all of the batch was (else the
    next search goes on from there)."""
    header = _HEADER.unpack_from(batch)
    base_offset, _, _, _, crc, attributes, last_delta, first_ts, max_ts = header[:9]
    producer_id, count = header[9], header[12]
    claimed: int = base_offset + max(0, last_delta)
    sound = calc_crc32c(batch[_CRC_FROM:]) == crc
    # The CRC covers lastOffsetDelta, and the broker finds the batch for an offset by it:
    # a sound one is the batch's extent. Its size says nothing of it: compressed records
    # take well under a byte each, and compaction keeps lastOffsetDelta as it removes
    # records. Unsound, it may claim anything, but not the offsets of the next batch.
    last_offset = claimed
    following, high_watermark = limits
    if not sound and following is not None and following > base_offset:
        last_offset = min(last_offset, following - 1)
    # The last batch has no batch after it: the high watermark bounds it (no record lies
    # there or past it), unless it lags where this read began.
    if not sound and high_watermark is not None and high_watermark > max(start, base_offset):
        last_offset = min(last_offset, high_watermark - 1)
    body = bytes(batch[_HEADER.size :])
    if (
        aborts is not None
        and producer_id >= 0
        and aborts.skips(base_offset, producer_id, attributes, body)
    ):
        return claimed, last_offset + 1, True
    if attributes & _CONTROL:
        return claimed, last_offset + 1, True  # transaction markers: no records of anyone's
    try:
        records = _parse_records(body, attributes, count)
        bounds = [-1, *(r[1] for r in records), last_offset - base_offset + 1]
        if any(a >= b for a, b in pairwise(bounds)):
            # out of order, they could not be handed on in order; past the batch's last
            # offset, they would be read again at every search after it
            raise _Malformed("record offsets out of order or past the batch's last")
    except Exception as failure:  # whatever the bytes make a codec or parser raise
        why = "its record batch fails its CRC" if not sound else f"unreadable batch: {failure!r}"
        first = max(start, base_offset)
        upto = min(last_offset, first + _MOST_SET_ASIDE - 1)
        for offset in range(first, upto + 1):
            out.append(_unreadable(topic, partition, offset, why))
        return claimed, upto + 1, upto == last_offset
    log_append = bool(attributes & _LOG_APPEND_TIME)
    for ts_delta, offset_delta, key, value, headers in records:
        offset = base_offset + offset_delta
        if offset < start:
            continue
        try:
            named = tuple((name.decode(), v) for name, v in headers)
            strange = False
        except UnicodeDecodeError:
            named = tuple((name.decode(errors="replace"), v) for name, v in headers)
            strange = True
        record = _record(
            topic,
            partition,
            (offset, max_ts if log_append else _int64(first_ts + ts_delta), int(log_append)),
            key,
            value,
            named,
        )
        if not sound:
            out.append(Undecodable(record, "its record batch fails its CRC"))
        elif strange:
            out.append(Undecodable(record, "a header key is not UTF-8"))
        else:
            out.append(record)
    return claimed, last_offset + 1, True


def _int64(value: int) -> int:
    """`value` wrapped to a signed 64-bit integer: a record's timestamp (base plus delta,
    each 64 bits and a foreign producer's to choose) as Kafka and the client compute it."""
    return (value + (1 << 63)) % (1 << 64) - (1 << 63)


_Parsed = tuple[int, int, bytes | None, bytes | None, list[tuple[bytes, bytes | None]]]


def _parse_records(body: bytes, attributes: int, count: int) -> list[_Parsed]:
    """(timestamp delta, offset delta, key, value, raw headers) of each record."""
    codec = attributes & _COMPRESSION
    if codec:
        decompress = _DECOMPRESS.get(codec)
        if decompress is None:
            raise _Malformed(f"unknown compression type {codec}")
        body = decompress(body)
    buffer = bytearray(body)
    pos = 0

    def varint() -> int:
        nonlocal pos
        value, pos = decode_varint(buffer, pos)
        return int(value)

    def nullable(size: int) -> bytes | None:
        nonlocal pos
        if size < 0:
            return None
        if pos + size > len(buffer):
            raise _Malformed("a record runs past its batch")
        chunk = bytes(buffer[pos : pos + size])
        pos += size
        return chunk

    records: list[_Parsed] = []
    for _ in range(count):
        length = varint()
        begins = pos
        pos += 1  # attributes: unused by any record format so far
        ts_delta = varint()
        offset_delta = varint()
        key = nullable(varint())
        value = nullable(varint())
        headers: list[tuple[bytes, bytes | None]] = []
        for _ in range(varint()):
            name = nullable(varint())
            if name is None:
                raise _Malformed("a header without a key")
            headers.append((name, nullable(varint())))
        if pos - begins != length:
            raise _Malformed(f"a record of {pos - begins} bytes says it has {length}")
        records.append((ts_delta, offset_delta, key, value, headers))
    if pos != len(buffer):
        raise _Malformed("bytes left over after the batch's records")
    return records


def _read_legacy(
    topic: str,
    partition: int,
    batch: memoryview,
    start: int,
    out: list[ConsumerRecord[bytes, bytes] | Undecodable],
) -> int:
    """Append the records of a v0/v1 message set (no headers: the client's reader has
    nothing to fail on but a corrupt one); the offset after it."""
    base_offset: int = struct.unpack_from(">q", batch)[0]
    try:
        reader = MemoryRecords(bytes(batch)).next_batch()
        if not reader.validate_crc():
            raise _Malformed("its message fails its CRC")
        records = [
            _record(topic, partition, (r.offset, r.timestamp, r.timestamp_type), r.key, r.value, ())
            for r in reader
        ]
    except Exception as failure:  # whatever a corrupt message makes the reader raise
        if base_offset >= start:
            out.append(_unreadable(topic, partition, base_offset, f"unreadable: {failure!r}"))
        return base_offset + 1
    out.extend(r for r in records if r.offset >= start)
    return max((int(r.offset) for r in records), default=base_offset) + 1
