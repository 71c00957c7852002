"""Everything the processor writes: changelog, CRM sync, audit, DLQ (and the audit file)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import IO, Any

from aiokafka import AIOKafkaProducer

from processor.models import AuditRecord, CrmSyncRecord, DeadLetter
from processor.settings import KafkaSettings, TypingSettings

from .kafka import client_options

Headers = list[tuple[str, bytes]]


class Outbound:
    """One producer for every outbound topic; sends return futures to await for acks.

    Changelog records go to the partition of the input record they came from, so a
    partition's store is restored from exactly one changelog partition.
    """

    def __init__(self, kafka: KafkaSettings, typing: TypingSettings) -> None:
        self._producer = AIOKafkaProducer(
            **client_options(kafka),
            client_id=f"{kafka.client_id}-producer",
            acks="all",
            enable_idempotence=kafka.enable_idempotence,
            linger_ms=5,
            compression_type=None,
        )
        self._typing = typing
        self.changelog_topic = typing.resolved_changelog_topic
        self._audit_file: IO[bytes] | None = None

    async def start(self) -> None:
        """Connect the producer and open the audit file, if configured."""
        await self._producer.start()
        path: Path | None = self._typing.audit_log_file
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._audit_file = path.open("ab")

    async def stop(self) -> None:
        """Flush and close."""
        await self._producer.flush()
        await self._producer.stop()
        if self._audit_file is not None:
            self._audit_file.close()
            self._audit_file = None

    async def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await self._producer.send(
            topic, value, key=key, partition=partition, headers=headers
        )
        return future

    async def changelog(
        self, partition: int, key: bytes, value: bytes | None
    ) -> asyncio.Future[Any]:
        """A state record (None = tombstone) for the store of `partition`."""
        return await self._send(self.changelog_topic, key, value, partition=partition)

    async def crm(
        self, record: CrmSyncRecord, headers: Headers | None = None
    ) -> asyncio.Future[Any]:
        """One applied change, for the CRM webhook worker."""
        return await self._send(
            self._typing.crm_topic, record.session_id.encode(), record.to_bytes(), headers=headers
        )

    async def audit(
        self, record: AuditRecord, headers: Headers | None = None
    ) -> asyncio.Future[Any]:
        """One decision; also appended to the audit file when one is configured.

        The file is buffered: `flush_audit_file` pushes a turn's lines out at once.
        """
        value = record.to_bytes()
        if self._audit_file is not None:
            self._audit_file.write(value + b"\n")
        return await self._send(
            self._typing.audit_topic, record.session_id.encode(), value, headers=headers
        )

    def flush_audit_file(self) -> None:
        """Hand the audit lines written so far to the OS (one write per turn, not per line)."""
        if self._audit_file is not None:
            self._audit_file.flush()

    async def dead_letter(
        self, key: bytes | None, record: DeadLetter, headers: Headers | None = None
    ) -> asyncio.Future[Any]:
        """A rejected input record, keyed as the input was."""
        return await self._send(self._typing.dlq_topic, key, record.to_bytes(), headers=headers)
