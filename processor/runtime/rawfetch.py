"""One partition's record set as the broker sends it, before any decoding.

For the rare fetch the consumer cannot decode (see `undecodable`): a client of its own,
opened for the occasion with the consumer's connection settings, asks the partition's
leader for the bytes at an offset, and `recordbatch` reads them. Read committed (as the
consumer reads), the broker sends records up to the last stable offset and names the
aborted transactions among them.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, LeaderNotAvailableError, for_code
from aiokafka.protocol.fetch import FetchRequest

from processor.settings import IsolationLevel, KafkaSettings

from .kafka import client_options

FETCH_BYTES = 1 << 20
"""Bytes asked for at first (the consumer's own default per partition)."""
MAX_FETCH_BYTES = 1 << 26
"""Bytes asked for at most, when a single record batch is larger than that."""
FETCH_WAIT_MS = 100
"""How long the broker may wait for data at the end of the partition."""
_ISOLATION = {IsolationLevel.READ_UNCOMMITTED: 0, IsolationLevel.READ_COMMITTED: 1}
_ABORTED_FROM_V11 = 2  # where the aborted transactions are among a partition's fields


@dataclass(frozen=True, slots=True)
class RawRecords:
    """One partition's answer to a fetch."""

    data: bytes
    """The record set, as the broker stores it."""
    aborted: list[tuple[int, int]] | None
    """Read committed: each aborted transaction in it, as (producer id, first offset);
    None when reading uncommitted (every record counts)."""
    high_watermark: int | None = None
    """The partition's high watermark as the leader answered: no record lies at or past
    it (None: not known)."""


class RawFetcher:
    """Fetches raw record sets; use as an async context manager (it opens a client)."""

    def __init__(self, kafka: KafkaSettings) -> None:
        """A client with the consumers' connection settings, reading at their isolation."""
        self._client = AIOKafkaClient(**client_options(kafka))
        self._isolation = kafka.isolation_level

    async def __aenter__(self) -> RawFetcher:
        try:
            await self._client.bootstrap()
        except BaseException:
            await self._client.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.close()

    async def fetch(self, tp: TopicPartition, offset: int, max_bytes: int) -> RawRecords:
        """The record set of `tp` from `offset`, at most about `max_bytes` (a broker sends a
        larger first batch whole, or cuts it short: then ask for more). Kafka's errors
        raise as the client's `KafkaError`s."""
        await self._client.add_topic(tp.topic)
        leader = self._client.cluster.leader_for_partition(tp)
        if leader is None or leader < 0:
            raise LeaderNotAvailableError(f"no leader known for {tp.topic}/{tp.partition}")
        request = FetchRequest(
            FETCH_WAIT_MS,
            1,
            max_bytes,
            _ISOLATION[self._isolation],
            [(tp.topic, [(tp.partition, offset, max_bytes)])],
        )
        response = await self._client.send(leader, request)
        committed = self._isolation is IsolationLevel.READ_COMMITTED
        for _, partitions in response.topics:
            for partition, error_code, highwater, *rest in partitions:
                if partition != tp.partition:
                    continue
                if error_code:
                    error: KafkaError = for_code(error_code)()
                    raise error
                aborted = _aborted(response.API_VERSION, rest) if committed else None
                return RawRecords(bytes(rest[-1] or b""), aborted, int(highwater))
        return RawRecords(b"", [] if committed else None)


def _aborted(version: int, fields: list[Any]) -> list[tuple[int, int]]:
    """The aborted transactions among a partition's fields after its high watermark: v4
    to v10 put them just before the records, v11 on before the preferred replica too
    (versions before 4 have no transactions)."""
    if version < 4:
        return []
    listed = fields[_ABORTED_FROM_V11] if version >= 11 else fields[-2]
    return [(int(producer), int(first)) for producer, first in listed or ()]
