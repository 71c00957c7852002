"""One partition's record set as the broker sends it, before any decoding.

For the rare fetch the consumer cannot decode (see `undecodable`): a client of its own,
opened for the occasion with the consumer's connection settings, asks the partition's
leader for the bytes at an offset, and `recordbatch` reads them.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, LeaderNotAvailableError, for_code
from aiokafka.protocol.fetch import FetchRequest

FETCH_BYTES = 1 << 20
"""Bytes asked for at first (the consumer's own default per partition)."""
MAX_FETCH_BYTES = 1 << 26
"""Bytes asked for at most, when a single record batch is larger than that."""
FETCH_WAIT_MS = 100
"""How long the broker may wait for data at the end of the partition."""
_READ_UNCOMMITTED = 0  # as the consumers: every record, markers aside


class RawFetcher:
    """Fetches raw record sets; use as an async context manager (it opens a client)."""

    def __init__(self, client_options: dict[str, Any]) -> None:
        self._client = AIOKafkaClient(**client_options)

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

    async def fetch(self, tp: TopicPartition, offset: int, max_bytes: int) -> bytes:
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
            _READ_UNCOMMITTED,
            [(tp.topic, [(tp.partition, offset, max_bytes)])],
        )
        response = await self._client.send(leader, request)
        for _, partitions in response.topics:
            for partition, error_code, _, *rest in partitions:
                if partition != tp.partition:
                    continue
                if error_code:
                    error: KafkaError = for_code(error_code)()
                    raise error
                return bytes(rest[-1] or b"")
        return b""
