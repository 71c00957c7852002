"""Kafka clients and requests given up on, reported as what they are.

A stop gives a cluster that does not answer a bounded time (`service.CLOSE_S`,
`command.DRAIN_BUDGET_S`); past it, a client is dropped unclosed. A commit that timed out
goes on inside aiokafka (it shields the request from cancellation) and may fail later,
with nobody left to read its exception. asyncio reports both as errors ("Unclosed
AIOKafkaConsumer", "Task exception was never retrieved" with a traceback), which reads as a
crash where nothing went wrong but the cluster's silence, already logged as a warning.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

_NEVER_RETRIEVED = "Task exception was never retrieved"
_UNCLOSED = "Unclosed AIOKafka"


def report_abandoned_kafka_work(loop: asyncio.AbstractEventLoop) -> None:
    """From now on, report `loop`'s unclosed Kafka clients and late failures of abandoned
    Kafka requests as one warning line each; every other report goes where it went before.

    For the loop's whole life, not a block: a client dropped unclosed is reported when it
    is collected, which may be after the code that dropped it has returned.
    """
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith(_UNCLOSED):
            client = message.removeprefix("Unclosed ")
            log.warning("%s left unclosed: the cluster did not answer in time", client)
            return
        exc = context.get("exception")
        if message == _NEVER_RETRIEVED and isinstance(exc, KafkaError):
            log.warning("a Kafka request given up on earlier failed later: %r", exc)
            return
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    loop.set_exception_handler(handler)
