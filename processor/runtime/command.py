"""`typing-processor run`: the service's life cycle, signals and recovery from outages."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiokafka.errors import KafkaError

from processor.settings import Settings
from processor.sink.client import GenesysSink
from processor.sink.config import SinkConfig

from .kafka import TopicError
from .service import TypingProcessor

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


async def run_service(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; a lost broker is retried, never fatal. Returns exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sink = GenesysSink(SinkConfig.from_settings(settings.genesys, settings.typing))
    failures = 0
    try:
        while not stop.is_set():
            processor = TypingProcessor(settings, sink)
            try:
                await processor.run(stop)
                failures = 0
            except TopicError as exc:
                log.error("topic set-up is wrong: %s", exc)
                return 2
            except (KafkaError, OSError) as exc:
                delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
                failures += 1
                log.warning("Kafka unavailable (%s); restarting in %.0fs", exc, delay)
                try:
                    async with asyncio.timeout(delay):
                        await stop.wait()
                except TimeoutError:
                    pass
    finally:
        await sink.aclose()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped cleanly")
    return 0
